"""The README's walk-through, run from the README itself: its ```sh walkthrough blocks, in order, as one bash
script, against a real nginx (laid out as the README asks: an http block that includes the directory of
config_path) and the sample app. Only the variables the README says to change are set here."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.nginx import NginxInstance, free_port

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"^```sh walkthrough\n(.*?)^```\n", re.DOTALL | re.MULTILINE)
HOSTS = ("127.0.0.21", "127.0.0.22", "127.0.0.23")


def walkthrough_script() -> str:
    blocks = BLOCK.findall((ROOT / "README.md").read_text())
    assert len(blocks) >= 5, "the README's walk-through blocks are tagged ```sh walkthrough"
    return "set -euo pipefail\n" + "\n".join(blocks)


def test_readme_walkthrough(nginx_instance: NginxInstance, tmp_path: Path) -> None:
    nginx = nginx_instance
    app_port = free_port()
    state = tmp_path / "apps"
    state.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CANARYD_")},
        "PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
        "CANARYD_DATA_DIR": str(tmp_path / "data"),
        "CANARYD_MIN_STAGE_DURATION": "1",
        "CONTRACT_STATE": str(state),  # the sample apps' pid files
        "PORT": str(free_port()),
        "NGINX_INCLUDE_DIR": str(Path(nginx.config_path).parent),
        "NGINX_TEST": nginx.test_command,
        "NGINX_RELOAD": nginx.reload_command,
        "LISTEN": nginx.listen,
        "ACCESS_LOG": nginx.access_log,
        "APP_PORT": str(app_port),
        "STAGE_SECONDS": "2",
        # The threshold judge decides on min_requests (the test's few seconds of traffic suffice); p95 of a
        # few dozen requests on a loaded test machine is noise, and the bad version fails on errors.
        "CANARY_CONFIG": json.dumps(
            {"judge": "threshold", "health_check_interval": 1, "latency_min_difference_ms": 5000}
        ),
    }
    script = tmp_path / "walkthrough.sh"
    script.write_text(walkthrough_script())
    output = tmp_path / "walkthrough.out"
    with output.open("w") as sink:
        proc = subprocess.Popen(
            ["bash", str(script)],
            cwd=tmp_path,
            env={**env, "CLONE": str(ROOT)},
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: canaryd serve and the traffic loop go with it
        )
    try:
        try:
            proc.wait(timeout=100)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the walk-through did not finish in 100 s:\n{output.read_text()}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        for host in HOSTS:
            subprocess.run(
                [
                    sys.executable,
                    str(ROOT / "src/canaryd/demo/appctl.py"),
                    "stop",
                    "--host",
                    host,
                    "--port",
                    str(app_port),
                ],
                env={**env, "PATH": "/usr/bin:/bin"},
                timeout=30,
            )
    out = output.read_text()
    log = (tmp_path / "canaryd.log").read_text() if (tmp_path / "canaryd.log").exists() else ""
    assert proc.returncode == 0, out + "\n--- canaryd.log ---\n" + log
    assert "X-Version: v1" in out or "x-version: v1" in out.lower()
    assert "deployment 1 completed" in out
    assert "deployment 2 rolled_back" in out and "canaryctl exited 1 (1: rolled back)" in out
    assert "error_rate" in out
    assert not (tmp_path / "canaryd.db").exists(), "the database is in CANARYD_DATA_DIR"
    assert (tmp_path / "data" / "canaryd.db").exists()
