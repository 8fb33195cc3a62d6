"""canaryd as an operator runs it: `canaryd migrate` and `canaryd serve` as real processes (embedded mode,
SQLite in their own CANARYD_DATA_DIR), with a real nginx and sample apps. The serve process's stderr is kept
so tests can read its log."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from canaryd.settings import Settings
from tests.fixtures.nginx import free_port, start_nginx
from tests.fixtures.stack import TOKEN, Stack, loopback_hosts

BIN = Path(sys.executable).parent


def canaryd_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a canaryd process: only what it needs, nothing from the test runner's CANARYD_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANARYD_")}
    env.update(
        CANARYD_DATA_DIR=str(data_dir),
        CANARYD_BOOTSTRAP_TOKEN=TOKEN,
        CANARYD_MIN_STAGE_DURATION="1",
    )
    env.update(extra)
    return env


@dataclass
class ServedStack:
    stack: Stack
    log_path: Path
    process: subprocess.Popen[bytes]

    def log_lines(self) -> list[str]:
        return self.log_path.read_text().splitlines()


@contextlib.asynccontextmanager
async def served_stack(tmp_path: Path, **env: str) -> AsyncIterator[ServedStack]:
    data_dir = tmp_path / "data"
    full_env = canaryd_env(data_dir, **env)
    migrated = subprocess.run(
        [str(BIN / "canaryd"), "migrate"], env=full_env, capture_output=True, text=True, timeout=60
    )
    assert migrated.returncode == 0, migrated.stderr
    port = free_port()
    log_path = tmp_path / "canaryd.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [str(BIN / "canaryd"), "serve", "--port", str(port)],
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    nginx = start_nginx()
    base = f"http://127.0.0.1:{port}"
    stack: Stack | None = None
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(1200):  # up to 60 s: a loaded machine starts Python slowly
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{base}/healthz")).status_code == 200:
                        break
                if process.poll() is not None:
                    pytest.fail(f"canaryd serve exited {process.returncode}: {log_path.read_text()}")
                await asyncio.sleep(0.05)
            else:
                pytest.fail("canaryd serve did not become healthy")
        async with httpx.AsyncClient(
            base_url=f"{base}/api/v1", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        ) as api:
            settings = Settings(database_url=f"sqlite+aiosqlite:///{data_dir}/canaryd.db")
            stack = Stack(base, api, nginx, loopback_hosts(5), free_port(), tmp_path, settings)
            yield ServedStack(stack, log_path, process)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if stack is not None:
            await stack.stop_fleet()
        nginx.cleanup()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[ServedStack]:
    """`canaryd serve` as a process, logging JSON lines."""
    async with served_stack(tmp_path, CANARYD_LOG_FORMAT="json") as s:
        yield s
