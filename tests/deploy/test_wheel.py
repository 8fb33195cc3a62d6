"""A non-editable install (the wheel, as pip or the container image installs it) migrates a database: the
Alembic environment and revisions ship inside the package, not beside the source tree."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from canaryd.db.migrate import ROOT

REPO = Path(__file__).resolve().parents[2]
UV_BOOTSTRAP = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "canaryd/uv-bootstrap/bin/uv"


def uv_binary() -> str:
    found = shutil.which("uv") or (str(UV_BOOTSTRAP) if UV_BOOTSTRAP.exists() else None)
    if found is None:
        pytest.fail("uv not found: run `make setup` (scripts/setup.sh installs it)", pytrace=False)
    return found


def run(
    *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=150, cwd=cwd, env=env
    )
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_migrations_ship_inside_the_package() -> None:
    assert ROOT == REPO / "src" / "canaryd"
    assert (ROOT / "migrations" / "env.py").is_file()
    assert list((ROOT / "migrations" / "versions").glob("0001_*.py"))


def test_canaryd_migrate_from_a_wheel_install(tmp_path: Path) -> None:
    uv = uv_binary()
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    run(uv, "build", "--wheel", "--quiet", "--out-dir", tmp_path / "dist", REPO, env=env)
    wheels = list((tmp_path / "dist").glob("canaryd-*.whl"))
    assert len(wheels) == 1, wheels
    requirements = tmp_path / "requirements.txt"
    exported = run(
        uv, "export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project", "--quiet", cwd=REPO, env=env
    )
    requirements.write_text(exported.stdout)
    venv = tmp_path / "venv"
    run(uv, "venv", "--quiet", "--python", "python3", venv, env=env)
    run(
        uv,
        "pip",
        "install",
        "--quiet",
        "--python",
        venv / "bin/python",
        "-r",
        requirements,
        wheels[0],
        env=env,
    )

    # Run from an empty directory, so nothing of the source tree can be picked up.
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = run(venv / "bin/python", "-c", "import canaryd; print(canaryd.__file__)", cwd=work).stdout
    assert where.startswith(str(venv)), where
    db = work / "canaryd.db"
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("CANARYD_")}
    out = run(
        venv / "bin/canaryd",
        "migrate",
        cwd=work,
        env={**clean_env, "CANARYD_DATABASE_URL": f"sqlite+aiosqlite:///{db}"},
    )
    assert "created the schema" in out.stdout, out.stdout
    with sqlite3.connect(db) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    assert {"applications", "deployments", "api_tokens", "alembic_version"} <= tables
    assert revision == ScriptDirectory(str(ROOT / "migrations")).get_current_head()
