"""The sample app's launcher (`canaryd.demo.appctl`), the deploy and stop commands of the demo and the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import canaryd.demo
from tests.fixtures.nginx import free_port

APPCTL = Path(canaryd.demo.__file__).with_name("appctl.py")


def appctl(state: Path, *args: str) -> None:
    env = {**os.environ, "CONTRACT_STATE": str(state)}
    subprocess.run([sys.executable, str(APPCTL), *args], env=env, check=True, timeout=30)


def test_stop_leaves_a_process_that_reused_a_dead_instances_pid(tmp_path: Path) -> None:
    """A pid file left by an instance that died names whatever process got that pid since: stop removes
    the file and signals nothing; the instance's own process is stopped."""
    host, port = "127.0.0.2", free_port("127.0.0.2")
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / f"sampleapp-{host}-{port}.pid").write_text(str(bystander.pid))
        appctl(tmp_path, "stop", "--host", host, "--port", str(port))
        assert bystander.poll() is None, "stop signalled a process that is not the instance"
        assert not (tmp_path / f"sampleapp-{host}-{port}.pid").exists()

        appctl(tmp_path, "start", "--host", host, "--port", str(port), "--version", "v1")
        pid = int((tmp_path / f"sampleapp-{host}-{port}.pid").read_text())
        appctl(tmp_path, "stop", "--host", host, "--port", str(port))
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z", (
            "the instance still runs"
        )
    finally:
        bystander.kill()
        bystander.wait()
