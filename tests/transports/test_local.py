"""LocalTransport against this host: real subprocesses, real files."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import time
from pathlib import Path

import pytest

from canaryd.transports.base import Transport, TransportError
from canaryd.transports.local import LocalTransport

HOSTILE = 'it\'s $(touch PWNED) `touch PWNED` ; rm -rf ./nope "q" \\ * \n\t\x00\xff end'


def _alive(pid: int) -> bool:
    """Whether pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def _wait_dead(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        await asyncio.sleep(0.02)
    return False


def _children() -> set[int]:
    """This process's child processes."""
    found: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        found.update(int(pid) for pid in (task / "children").read_text().split())
    return found


@pytest.fixture
def local() -> LocalTransport:
    """A LocalTransport."""
    return LocalTransport()


def test_is_a_transport() -> None:
    """LocalTransport satisfies the Transport protocol."""
    transport: Transport = LocalTransport()
    assert transport is not None


async def test_run_returns_output_and_status(local: LocalTransport) -> None:
    """A command's stdout, stderr and exit status come back."""
    result = await local.run("echo out; echo err >&2; exit 3", timeout=10)
    assert (result.exit_status, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert not result.ok
    assert (await local.run("true", timeout=10)).ok


async def test_run_has_no_stdin(local: LocalTransport) -> None:
    """A command that reads stdin sees end of file at once instead of waiting."""
    result = await local.run("cat; echo done", timeout=5)
    assert result.stdout == "done\n"


async def test_run_undecodable_output_is_replaced(local: LocalTransport) -> None:
    """Output that is not UTF-8 is decoded with replacement characters, not an exception."""
    result = await local.run("printf '\\377ok'", timeout=5)
    assert result.stdout == "\ufffdok"


async def test_timeout_kills_command_and_children(local: LocalTransport, tmp_path: Path) -> None:
    """On timeout the shell and the processes it started are killed and TransportError names the command."""
    pidfile = tmp_path / "child.pid"
    command = f"sleep 60 & echo $! > {shlex.quote(str(pidfile))}; wait"
    started = time.monotonic()
    with pytest.raises(TransportError, match=r"command timed out after 0\.5 s: sleep 60 &"):
        await local.run(command, timeout=0.5)
    assert time.monotonic() - started < 5
    assert await _wait_dead(int(pidfile.read_text()))


async def test_daemon_holding_stdout_is_bounded_by_timeout(local: LocalTransport, tmp_path: Path) -> None:
    """A background process that keeps stdout open cannot hang run(): the timeout ends it."""
    pidfile = tmp_path / "daemon.pid"
    command = f"sleep 60 & echo $! > {shlex.quote(str(pidfile))}"
    started = time.monotonic()
    with pytest.raises(TransportError, match="timed out"):
        await local.run(command, timeout=1)
    assert time.monotonic() - started < 5
    assert await _wait_dead(int(pidfile.read_text()))


async def test_detached_daemon_returns_at_once_and_survives(local: LocalTransport, tmp_path: Path) -> None:
    """A daemon whose output is redirected lets run() return at once and keeps running afterwards."""
    pidfile = tmp_path / "daemon.pid"
    command = f"setsid sleep 60 >/dev/null 2>&1 </dev/null & echo $! > {shlex.quote(str(pidfile))}"
    started = time.monotonic()
    result = await local.run(command, timeout=10)
    assert result.ok
    assert time.monotonic() - started < 5
    pid = int(pidfile.read_text())
    try:
        assert _alive(pid)
    finally:
        os.kill(pid, signal.SIGKILL)


async def test_cancelled_run_kills_command(local: LocalTransport, tmp_path: Path) -> None:
    """Cancelling run() kills the command's process group too."""
    pidfile = tmp_path / "child.pid"
    task = asyncio.create_task(local.run(f"echo $$ > {shlex.quote(str(pidfile))}; sleep 60", timeout=60))
    while not pidfile.exists() or not pidfile.read_text().strip():
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _wait_dead(int(pidfile.read_text()))


async def test_run_cancelled_while_the_shell_starts_kills_its_children(
    local: LocalTransport, tmp_path: Path
) -> None:
    """A cancel that lands while asyncio is still connecting the new shell's pipes (a loaded machine, a lost
    lease) kills the command's children too: asyncio alone would kill the shell and then wait for the
    orphaned child that still holds the pipes."""
    pidfile = tmp_path / "child.pid"
    command = f"sleep 60 & echo $! > {shlex.quote(str(pidfile))}; wait"
    before = _children()
    task = asyncio.create_task(local.run(command, timeout=60))
    for _ in range(100):  # one loop step at a time, until the shell is forked
        await asyncio.sleep(0)
        if _children() - before:
            break
    # The shell's pipes are connected by later loop steps: block the loop while it starts its child.
    deadline = time.monotonic() + 5
    while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert pidfile.exists(), "the shell did not start its child"
    assert await _wait_dead(int(pidfile.read_text()))


async def test_file_roundtrip(local: LocalTransport, tmp_path: Path) -> None:
    """write → rename → size → read with offset and limit → remove."""
    tmp, final = str(tmp_path / "f.tmp"), str(tmp_path / "f")
    await local.write_file(tmp, b"0123456789")
    await local.rename(tmp, final)
    assert await local.file_size(tmp) is None
    assert await local.file_size(final) == 10
    assert await local.read_file(final) == b"0123456789"
    assert await local.read_file(final, offset=4) == b"456789"
    assert await local.read_file(final, offset=4, limit=3) == b"456"
    assert await local.read_file(final, offset=20) == b""
    await local.remove(final)
    assert await local.file_size(final) is None


async def test_rename_replaces_existing(local: LocalTransport, tmp_path: Path) -> None:
    """rename() atomically replaces an existing destination."""
    await local.write_file(str(tmp_path / "new"), b"new")
    await local.write_file(str(tmp_path / "cur"), b"old")
    await local.rename(str(tmp_path / "new"), str(tmp_path / "cur"))
    assert await local.read_file(str(tmp_path / "cur")) == b"new"


async def test_missing_files(local: LocalTransport, tmp_path: Path) -> None:
    """Reading a missing file raises; its size is None; removing it is fine; no parent dir is created."""
    missing = str(tmp_path / "missing")
    with pytest.raises(TransportError, match=r"cannot read .*missing: No such file"):
        await local.read_file(missing)
    assert await local.file_size(missing) is None
    await local.remove(missing)
    with pytest.raises(TransportError, match="cannot write"):
        await local.write_file(str(tmp_path / "nodir" / "f"), b"x")
    with pytest.raises(TransportError, match="cannot rename"):
        await local.rename(missing, str(tmp_path / "other"))


async def test_hostile_name_and_content_are_data(local: LocalTransport, tmp_path: Path) -> None:
    """A file name and content full of shell syntax are stored verbatim and never executed."""
    name = HOSTILE.replace("\x00", "").replace("/", "_")
    data = HOSTILE.encode("utf-8", errors="surrogateescape")
    path = str(tmp_path / name)
    await local.write_file(path, data)
    await local.rename(path, path + ".2")
    assert await local.read_file(path + ".2") == data
    assert await local.file_size(path + ".2") == len(data)
    await local.remove(path + ".2")
    assert os.listdir(tmp_path) == []
    assert not Path("PWNED").exists()


async def test_quoted_hostile_argument_is_data(local: LocalTransport, tmp_path: Path) -> None:
    """A shell-quoted hostile argument reaches the command as one literal string."""
    text = HOSTILE.replace("\x00", "")
    result = await local.run(f"cd {shlex.quote(str(tmp_path))} && printf %s {shlex.quote(text)}", timeout=5)
    assert result.stdout == text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
    assert os.listdir(tmp_path) == []
