"""Commands over SSH through long-lived shells: one SSH session per shell, many commands per shell.

Why: OpenSSH runs every exec request as `<login shell> -c <command>` in a new session, and a login shell
may read start-up files first (Debian's bash sources ~/.bashrc for SSH commands). Measured on the development
machine, whose root ~/.bashrc runs `pyenv init`: 500-780 ms per command, against ~1 ms for a file operation
over the same connection's SFTP channel; nginx's test and reload commands made a rollback over SSH take
1.3-1.7 s. A shell started once per channel pays that once; each command then costs one round trip and
the fork of `/bin/sh -c`.

What a command still gets, as with one session per command (and as with the local transport):

* its own `/bin/sh -c COMMAND`, stdin from /dev/null, nothing left behind in the shell (a `cd` or a
  variable does not leak into the next command);
* stdout and stderr apart; `run` returns only when both are closed, so a daemon that keeps them open is
  bounded by the timeout, as before. Both pass through a `cat` each, whose end the shell waits for;
* its exit status; a command killed by signal N reports -N (the shell says 128+N: a command that itself
  exits with 129-192 is reported as killed by a signal too);
* on timeout or cancellation the shell's whole process group (the shell, the command and every child that
  stayed in the group) is killed from another channel and the shell is discarded; the next command starts
  a fresh one.

Framing: before the first command the shell reports its process group and a ready marker on both streams,
so whatever the start-up files print is skipped. Each command ends with `\\n<token> <status>\\n` on stderr
and `\\n<token> end\\n` on both streams, with a random token per command.
"""

from __future__ import annotations

import asyncio
import secrets
import shlex
from dataclasses import dataclass

import asyncssh

from canaryd.transports.base import CommandResult

_PGID_MARK = "canaryd-pgid="
#: Exit statuses the shell gives a command killed by a signal: 128 + the signal number.
_SIGNALLED = range(129, 129 + 64)


class ShellLostError(Exception):
    """The shell's channel closed: before the command was sent (`started` False; safe to run it elsewhere)
    or while it ran (its outcome is unknown)."""

    def __init__(self, message: str, *, started: bool) -> None:
        super().__init__(message)
        self.started = started


def command_script(command: str, token: str) -> bytes:
    """The lines the shell is sent for one command (see the module docstring)."""
    status = f"printf '\\n{token} %d\\n' \"$?\" >&2"
    inner = f"{{ /bin/sh -c {shlex.quote(command)} </dev/null 3>&-; {status}; }}"
    end = f"printf '\\n{token} end\\n'; printf '\\n{token} end\\n' >&2"
    return f"{{ {{ {inner} 2>&1 1>&3 3>&- | cat 1>&2; }} 3>&1 | cat; }}; {end}\n".encode()


def parse_output(stdout: bytes, stderr: bytes, token: str) -> tuple[int, bytes, bytes]:
    """(exit status, stdout, stderr) from what the streams carried up to the end markers."""
    end = f"\n{token} end\n".encode()
    out = stdout.removesuffix(end)
    err = stderr.removesuffix(end)
    mark = f"\n{token} ".encode()
    at = err.rfind(mark)
    if at < 0:
        raise ValueError("no exit status in the shell's answer")
    status = int(err[at + len(mark) :].split(b"\n", 1)[0])
    return (-(status - 128) if status in _SIGNALLED else status), out, err[:at]


@dataclass(eq=False)
class Shell:
    """One `/bin/sh` reading commands from its SSH channel's stdin."""

    proc: asyncssh.SSHClientProcess[bytes]
    pgid: int | None
    #: Proven to be reading commands now (just started, or just answered a ping); cleared by each command.
    fresh: bool = True

    @classmethod
    async def start(cls, conn: asyncssh.SSHClientConnection, timeout: float) -> Shell:
        """Starts the shell (the login shell execs /bin/sh) and waits until it is ready. Raises asyncssh.Error
        or OSError when the channel cannot be opened, TimeoutError when the shell does not get ready."""
        proc = await conn.create_process(
            f"printf '{_PGID_MARK}%s\\n' \"$$\" >&2; exec /bin/sh", encoding=None
        )
        shell = cls(proc, None)
        try:
            token = secrets.token_hex(8)
            ready = f"\n{token} ready\n".encode()
            proc.stdin.write(f"printf '\\n{token} ready\\n'; printf '\\n{token} ready\\n' >&2\n".encode())
            _, err = await asyncio.wait_for(
                asyncio.gather(proc.stdout.readuntil(ready), proc.stderr.readuntil(ready)), timeout
            )
        except BaseException:
            proc.close()
            raise
        at = err.rfind(_PGID_MARK.encode())
        if at >= 0:
            value = err[at + len(_PGID_MARK) :].split(b"\n", 1)[0]
            shell.pgid = int(value) if value.isdigit() else None
        return shell

    def alive(self) -> bool:
        return not self.proc.is_closing() and self.proc.exit_status is None

    async def ping(self) -> None:
        """One round trip proving that the shell still reads commands, before a command is sent to an idle
        shell: a connection that died while the shell was idle is then found before anything runs, so the
        command can safely go to a fresh connection (it is never sent twice)."""
        token = secrets.token_hex(8)
        mark = f"\n{token} pong\n".encode()
        try:
            self.proc.stdin.write(f"printf '\\n{token} pong\\n'\n".encode())
            await self.proc.stdout.readuntil(mark)
        except (asyncio.IncompleteReadError, asyncssh.Error, OSError) as exc:
            raise ShellLostError("the shell's channel is closed", started=False) from exc
        self.fresh = True

    async def run(self, command: str) -> CommandResult:
        """Runs one command; no timeout here (the caller bounds it and kills the shell on expiry)."""
        token = f"canaryd-{secrets.token_hex(8)}"
        if not self.alive():
            raise ShellLostError("the shell's channel is closed", started=False)
        if not self.fresh:
            await self.ping()
        self.fresh = False
        try:
            self.proc.stdin.write(command_script(command, token))
        except (asyncssh.Error, OSError) as exc:
            raise ShellLostError(f"cannot send the command: {exc}", started=False) from exc
        end = f"\n{token} end\n".encode()
        try:
            out, err = await asyncio.gather(self.proc.stdout.readuntil(end), self.proc.stderr.readuntil(end))
        except (asyncio.IncompleteReadError, asyncssh.Error, OSError) as exc:
            raise ShellLostError("the channel closed while the command ran", started=True) from exc
        status, stdout, stderr = parse_output(out, err, token)
        return CommandResult(status, stdout.decode(errors="replace"), stderr.decode(errors="replace"))

    def close(self) -> None:
        self.proc.close()
