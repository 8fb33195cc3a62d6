"""The container image under test, built with podman from the locally made base (deploy/image/build.sh)."""

from __future__ import annotations

import resource
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE = "localhost/canaryd:test"
MISSING = "podman is not installed: apt-get install -y podman runc debootstrap (make setup does this)"


def podman_binary() -> str:
    found = shutil.which("podman")
    if found is None:
        pytest.fail(MISSING, pytrace=False)
    return found


def podman_cmd(*args: str) -> list[str]:
    """podman with the settings that work without systemd: the cgroupfs manager, events in a file, runc."""
    return [podman_binary(), "--cgroup-manager=cgroupfs", "--events-backend=file", "--runtime=runc", *args]


def run_limits() -> list[str]:
    """podman asks for nofile 1048576 and nproc 4194304 by default, which a root without CAP_SYS_RESOURCE (this
    machine, many CI runners) may not grant: ask for this process's own open-files limit and 4096 processes."""
    _, nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=4096:4096"]


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(podman_cmd(*args), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(
            f"podman {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}", pytrace=False
        )
    return proc


def build_image(tag: str = IMAGE) -> str:
    """Builds the image (and, once per machine, the base); seconds when both are cached."""
    podman_binary()
    proc = subprocess.run(
        ["bash", str(REPO / "deploy/image/build.sh"), tag], capture_output=True, text=True, timeout=840
    )
    if proc.returncode != 0:
        pytest.fail(
            f"deploy/image/build.sh failed ({proc.returncode}):\n{proc.stderr[-4000:]}", pytrace=False
        )
    return proc.stdout.strip().splitlines()[-1]
