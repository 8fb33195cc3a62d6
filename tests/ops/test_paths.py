"""Where canaryd keeps its database, and what it says when there is no schema (real `canaryd` processes)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .conftest import BIN, canaryd_env


def canaryd(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "canaryd"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_no_schema_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    data, work = tmp_path / "data", tmp_path / "work"
    work.mkdir()
    env = canaryd_env(data)
    for args in (("token", "list"), ("token", "create", "--name", "ci", "--scope", "read"), ("serve",)):
        result = canaryd(env, work, *args)
        assert result.returncode == 2, result
        assert result.stderr.strip().splitlines() == [
            f"error: no canaryd schema in {data}/canaryd.db; run `canaryd migrate` first"
        ]
        assert "Traceback" not in result.stdout + result.stderr
    assert list(work.iterdir()) == [], "nothing is created in the working directory"
    assert not data.exists(), "nor an empty database in the data directory"


def test_migrate_says_what_it_did_once(tmp_path: Path) -> None:
    data, work = tmp_path / "data", tmp_path / "work"
    work.mkdir()
    env = canaryd_env(data)
    first = canaryd(env, work, "migrate")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"created the schema (0009) in {data}/canaryd.db"
    assert first.stderr == "", "no 'Running upgrade' lines that contradict the summary"
    again = canaryd(env, work, "migrate")
    assert again.stdout.strip().endswith("was already at the latest schema (0009); nothing to do")
    created = canaryd(env, work, "token", "create", "--name", "ci", "--scope", "deploy", "--expires-in", "60")
    assert created.returncode == 0 and created.stdout.startswith("cdt_"), created.stderr
    listed = canaryd(env, tmp_path, "token", "list")  # another working directory: the same database
    assert listed.returncode == 0 and " ci " in listed.stdout and created.stdout.strip() not in listed.stdout
    token_id = listed.stdout.split()[0]
    assert canaryd(env, work, "token", "revoke", token_id).stdout.strip() == f"token {token_id} revoked"
    twice = canaryd(env, work, "token", "revoke", token_id)
    assert twice.returncode == 1 and "already revoked" in twice.stderr
    assert list(work.iterdir()) == []


def test_old_schema_is_named(tmp_path: Path) -> None:
    """A database at an older revision: serve refuses in one line naming both revisions."""
    data = tmp_path / "data"
    env = canaryd_env(data)
    from canaryd.db.migrate import upgrade

    data.mkdir()
    upgrade(f"sqlite+aiosqlite:///{data}/canaryd.db", "0001")
    result = canaryd(env, tmp_path, "serve")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: the database {data}/canaryd.db is at schema 0001, this canaryd needs 0009; "
        "run `canaryd migrate`"
    )
