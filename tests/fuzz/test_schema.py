"""schemathesis against canaryd's own OpenAPI schema: a real `canaryd serve` (embedded mode, SQLite) on a
real port gets generated requests, valid and invalid, authenticated with the bootstrap token. None may
answer 5xx.

`POST /applications` is left out on purpose: a valid body registers an application whose proxy
reload/test commands canaryd then *runs* on this machine (as root here), and generated commands must not
run. Its validation is covered by tests/api/test_validation.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from tests.fixtures.nginx import free_port

from canaryd.api.app import create_app
from canaryd.settings import Settings

TOKEN = "schemathesis-bootstrap-token-0123456789"
VENV_BIN = Path(sys.executable).parent

schema = schemathesis.openapi.from_dict(
    create_app(Settings(database_url="sqlite+aiosqlite:///:memory:", min_stage_duration=1)).openapi()
).exclude(method="POST", path="/api/v1/applications")


@pytest.fixture(scope="module")
def api_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`canaryd serve` in a subprocess on a free port, with a migrated SQLite database and a few rows."""
    d = tmp_path_factory.mktemp("schemathesis")
    env = {
        **os.environ,
        "CANARYD_DATABASE_URL": f"sqlite+aiosqlite:///{d}/canaryd.db",
        "CANARYD_BOOTSTRAP_TOKEN": TOKEN,
        "CANARYD_MIN_STAGE_DURATION": "1",
        "CANARYD_LOG_LEVEL": "WARNING",
    }
    env.pop("CANARYD_REDIS_URL", None)
    subprocess.run([VENV_BIN / "canaryd", "migrate"], env=env, check=True, capture_output=True)
    port = free_port()
    with open(d / "serve.log", "wb") as log:
        proc = subprocess.Popen(
            [VENV_BIN / "canaryd", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"canaryd serve did not start: {(d / 'serve.log').read_text()[-2000:]}")
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        SERVE_LOGS.append((d / "serve.log").read_text(errors="replace"))


SERVE_LOGS: list[str] = []
STATUSES: list[int] = []


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.filter_too_much,
        HealthCheck.too_slow,
    ],
)
def test_no_request_gets_a_5xx(case: Any, api_base: str) -> None:
    """Every generated request, valid or not, gets a 2xx/4xx answer: never a server error."""
    response = case.call(base_url=api_base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    STATUSES.append(response.status_code)
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:500]}"
    )


def test_the_fuzzing_reached_the_handlers() -> None:
    """The run above was not vacuous: many requests, and some of them were accepted (2xx)."""
    assert len(STATUSES) >= 100, len(STATUSES)
    assert any(200 <= s < 300 for s in STATUSES) and any(400 <= s < 500 for s in STATUSES)
    assert all("Traceback" not in log for log in SERVE_LOGS), SERVE_LOGS[-1][-3000:]
