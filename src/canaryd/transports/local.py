"""The `local` transport: run commands and touch files on the host canaryd itself runs on.

Commands run as `/bin/sh -c COMMAND` in a session of their own, with stdin from /dev/null. `run` returns when
the shell has exited *and* its stdout and stderr are closed, so a command that starts a daemon which keeps
them open would never return: the timeout bounds it. On timeout the command's whole process group is killed
(the shell and everything it started that did not leave the group) and `TransportError` is raised.

Deploy commands that start long-running processes must therefore detach them from the command's output,
e.g. `nohup app >app.log 2>&1 </dev/null &` or `setsid app >/dev/null 2>&1 &`, as the sample app's launcher
(`canaryd.demo.appctl`) does. The SSH transport has the same rule, for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

from canaryd.transports.base import CommandResult, TransportError

SHELL = "/bin/sh"
# How long to wait for the killed process group to be reaped before giving up on it.
_KILL_GRACE = 2.0


def _describe(command: str) -> str:
    return command[:200]


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


async def _kill_when_started(spawn: asyncio.Future[asyncio.subprocess.Process]) -> None:
    proc = await spawn
    _kill_group(proc.pid)
    await asyncio.wait_for(proc.wait(), _KILL_GRACE)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _error(action: str, path: str, exc: OSError) -> TransportError:
    return TransportError(f"local: cannot {action} {path}: {exc.strerror or exc}")


def _read(path: str, offset: int, limit: int | None) -> bytes:
    with open(path, "rb") as f:
        if offset:
            f.seek(offset)
        return f.read(-1 if limit is None else limit)


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


class LocalTransport:
    """Reach this host directly: subprocesses for commands, the file system for files."""

    async def run(self, command: str, timeout: float) -> CommandResult:
        spawn = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                SHELL,
                "-c",
                command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        )
        try:
            proc = await asyncio.shield(spawn)
        except OSError as exc:
            raise TransportError(f"local: cannot start {SHELL}: {exc.strerror or exc}") from exc
        except asyncio.CancelledError:
            # Cancelled while the shell was starting: it may already run the command, which must not
            # outlive our interest in it either (asyncio would kill the shell alone, not its children).
            with contextlib.suppress(Exception):
                await _kill_when_started(spawn)
            raise
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout)
        except BaseException as exc:
            # Timed out or cancelled: the command must not outlive our interest in it. start_new_session made
            # the shell the leader of its own process group, so its pid is the group id.
            _kill_group(proc.pid)
            with contextlib.suppress(TimeoutError):
                # A process that escaped the group may still hold the pipes; then this gives up.
                await asyncio.wait_for(proc.wait(), _KILL_GRACE)
            if isinstance(exc, TimeoutError):
                raise TransportError(f"command timed out after {timeout:g} s: {_describe(command)}") from None
            raise
        assert proc.returncode is not None  # communicate() returns only after the process exited
        return CommandResult(exit_status=proc.returncode, stdout=_decode(stdout), stderr=_decode(stderr))

    async def read_file(self, path: str, offset: int = 0, limit: int | None = None) -> bytes:
        try:
            return await asyncio.to_thread(_read, path, offset, limit)
        except OSError as exc:
            raise _error("read", path, exc) from exc

    async def file_size(self, path: str) -> int | None:
        try:
            st = await asyncio.to_thread(os.stat, path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _error("stat", path, exc) from exc
        return st.st_size

    async def write_file(self, path: str, data: bytes) -> None:
        try:
            await asyncio.to_thread(_write, path, data)
        except OSError as exc:
            raise _error("write", path, exc) from exc

    async def rename(self, src: str, dst: str) -> None:
        try:
            await asyncio.to_thread(os.replace, src, dst)
        except OSError as exc:
            raise _error("rename", f"{src} to {dst}", exc) from exc

    async def remove(self, path: str) -> None:
        try:
            await asyncio.to_thread(os.remove, path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _error("remove", path, exc) from exc

    async def unix_request(self, path: str, payload: bytes, timeout: float) -> bytes:
        """Writes `payload` to the unix stream socket `path`, half-closes, reads until EOF."""

        async def exchange() -> bytes:
            reader, writer = await asyncio.open_unix_connection(path)
            try:
                writer.write(payload)
                await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
                return await reader.read()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

        try:
            return await asyncio.wait_for(exchange(), timeout)
        except TimeoutError:
            raise TransportError(f"local: no answer from {path} within {timeout:g} s") from None
        except OSError as exc:
            raise _error("talk to socket", path, exc) from exc
