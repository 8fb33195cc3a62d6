"""The `ssh` transport: pooled asyncssh connections with verified host keys.

One connection per (host, port, user), opened on first use, shared by every caller and opened again when it
has closed (the server restarted, the network dropped it, keepalives went unanswered). A per-key lock makes
concurrent first uses open a single connection. Each connection carries at most `max_sessions` (8) concurrent
commands, plus the SFTP client and one channel for killing a timed-out command: 10, OpenSSH's default
`MaxSessions`. Further commands wait for a free slot.

Host keys are always checked against the operator's known_hosts file: there is no "accept any key" mode.
An unknown or changed key is refused with a message that says how to trust the host.

Commands run as `/bin/sh -c COMMAND` with stdin at /dev/null, sent to a long-lived `/bin/sh` of the
connection (exec'd once from the user's login shell, which must be POSIX-like; see ssh_shell.py: a session
and a login shell per command cost 0.5-0.8 s here). As with the local transport, a command returns only when
its output is closed, so deploy commands must detach the daemons they start from stdout/stderr; the timeout
bounds the rest. On timeout (or cancellation) canaryd SIGKILLs the shell's process group with `kill` over a
second channel and discards that shell: processes that left the group (setsid daemons) are not touched.

A command is retried on a fresh shell or connection only when it was never sent (the shell's channel, or
the connection, was found closed first), so a retry never runs a command twice. File operations use one SFTP
client per connection; reads, stats, writes and removes are retried once after a dropped connection, renames
are not (a rename that succeeded before the drop would fail on retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncssh

from canaryd.transports.base import CommandResult, TransportError
from canaryd.transports.ssh_shell import Shell, ShellLostError

T = TypeVar("T")

_Key = tuple[str, int, str]
# How long to wait for a closing connection or a killed command's channel before giving up on it.
_CLOSE_GRACE = 2.0


def _describe(command: str) -> str:
    return command[:200]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.DisconnectError | asyncssh.ChannelOpenError | asyncssh.SFTPError):
        return exc.reason or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


@dataclass(eq=False)
class _Connection:
    conn: asyncssh.SSHClientConnection
    sessions: asyncio.Semaphore
    sftp_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # One kill channel at a time: with max_sessions commands and the SFTP client, stays within MaxSessions.
    kill_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sftp: asyncssh.SFTPClient | None = None
    #: Idle long-lived shells (ssh_shell.py), at most `max_sessions`.
    shells: list[Shell] = field(default_factory=list)

    def is_closed(self) -> bool:
        return bool(self.conn.is_closed())

    async def sftp_client(self) -> asyncssh.SFTPClient:
        async with self.sftp_lock:
            if self.sftp is None:
                self.sftp = await self.conn.start_sftp_client()
            return self.sftp

    async def close(self) -> None:
        for shell in self.shells:
            shell.close()
        self.shells.clear()
        if self.sftp is not None:
            self.sftp.exit()
        self.conn.close()
        with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
            await asyncio.wait_for(self.conn.wait_closed(), _CLOSE_GRACE)


class SshPool:
    """The SSH connections of one canaryd process. Make one at start-up; `await close()` at shutdown."""

    def __init__(
        self,
        known_hosts: str,
        client_keys: Sequence[str] | None = None,
        connect_timeout: float = 10.0,
        *,
        max_sessions: int = 8,
        keepalive_interval: float = 30.0,
    ) -> None:
        if not known_hosts:
            raise ValueError("known_hosts is required: SSH host keys are always verified")
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.known_hosts = known_hosts
        self.client_keys = list(client_keys) if client_keys is not None else None
        self.connect_timeout = connect_timeout
        self.max_sessions = max_sessions
        self.keepalive_interval = keepalive_interval
        self.connections_opened = 0
        """How many connections this pool has opened in its life (reuse keeps it low)."""
        self._connections: dict[_Key, _Connection] = {}
        self._locks: dict[_Key, asyncio.Lock] = {}
        self._closed = False

    def transport(self, host: str, port: int, user: str) -> SshTransport:
        return SshTransport(self, host, port, user)

    @property
    def open_connections(self) -> int:
        """How many pooled connections are open right now."""
        return sum(not c.is_closed() for c in self._connections.values())

    async def connection(self, host: str, port: int, user: str) -> asyncssh.SSHClientConnection:
        """The pooled connection for (host, port, user), opened if needed."""
        return (await self._get((host, port, user))).conn

    async def _get(self, key: _Key) -> _Connection:
        current = self._connections.get(key)
        if current is not None and not current.is_closed():
            return current
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if self._closed:
                raise TransportError(f"ssh {key[0]}:{key[1]}: the SSH pool is closed")
            current = self._connections.get(key)
            if current is not None and not current.is_closed():
                return current
            if current is not None:
                await self._discard(key, current)
            fresh = await self._connect(key)
            self._connections[key] = fresh
            self.connections_opened += 1
            return fresh

    async def _discard(self, key: _Key, entry: _Connection) -> None:
        if self._connections.get(key) is entry:
            del self._connections[key]
        await entry.close()

    async def _connect(self, key: _Key) -> _Connection:
        host, port, user = key
        where = f"ssh {host}:{port}"
        keyscan = f"ssh-keyscan -p {port} {host} >> {self.known_hosts}"
        if not await asyncio.to_thread(os.path.isfile, self.known_hosts):
            raise TransportError(
                f"{where}: known_hosts file {self.known_hosts} does not exist; "
                f"check the host's key and add it with: {keyscan}"
            )
        options: dict[str, Any] = {
            "username": user,
            "known_hosts": self.known_hosts,
            "connect_timeout": self.connect_timeout,
            "keepalive_interval": self.keepalive_interval,
            "keepalive_count_max": 3,
        }
        if self.client_keys is not None:
            options["client_keys"] = self.client_keys
        try:
            conn = await asyncssh.connect(host, port, **options)
        except asyncssh.HostKeyNotVerifiable as exc:
            raise self._host_key_refused(where, host, port, keyscan, exc) from exc
        except asyncssh.PermissionDenied as exc:
            raise TransportError(f"{where}: authentication failed for user {user}: {exc.reason}") from exc
        except asyncssh.KeyImportError as exc:
            raise TransportError(f"{where}: cannot load a client key: {exc}") from exc
        except TimeoutError as exc:
            raise TransportError(f"{where}: connection timed out after {self.connect_timeout:g} s") from exc
        except (asyncssh.Error, OSError) as exc:
            raise TransportError(f"{where}: cannot connect: {_reason(exc)}") from exc
        return _Connection(conn=conn, sessions=asyncio.Semaphore(self.max_sessions))

    def _host_key_refused(
        self, where: str, host: str, port: int, keyscan: str, exc: asyncssh.HostKeyNotVerifiable
    ) -> TransportError:
        """A refused host key is permanent. A key that differs from the one known_hosts holds for the host
        (a possible man-in-the-middle) is told apart from a host that known_hosts does not list at all."""
        try:
            known = asyncssh.read_known_hosts(self.known_hosts).match(host, "", port)[0]
        except (OSError, ValueError):
            known = []
        if known:
            return TransportError(
                f"{where}: host key verification failed: HOST KEY CHANGED: the server offered a key that differs from the one "
                f"{self.known_hosts} holds for it ({exc.reason}); this may be a man-in-the-middle. Do not "
                "accept the new key before checking it on the server itself.",
                permanent=True,
            )
        return TransportError(
            f"{where}: host key verification failed: unknown host: {self.known_hosts} holds no key for it ({exc.reason}); "
            f"check the host's key and add it with: {keyscan}",
            permanent=True,
        )

    async def close(self) -> None:
        """Close every connection. The pool refuses further use."""
        self._closed = True
        entries = list(self._connections.items())
        self._connections.clear()
        for _key, entry in entries:
            await entry.close()


def _connection_failure(entry: _Connection, exc: BaseException) -> bool:
    """Whether exc means the connection itself is gone (rather than one operation failing on a live one)."""
    return entry.is_closed() or isinstance(exc, asyncssh.DisconnectError)


class SshTransport:
    """One server reached through a pooled SSH connection."""

    def __init__(self, pool: SshPool, host: str, port: int, user: str) -> None:
        self.pool = pool
        self.host = host
        self.port = port
        self.user = user

    def __repr__(self) -> str:
        return f"SshTransport({self.user}@{self.host}:{self.port})"

    @property
    def _key(self) -> _Key:
        return (self.host, self.port, self.user)

    def _error(self, message: str) -> TransportError:
        return TransportError(f"ssh {self.host}:{self.port}: {message}")

    async def run(self, command: str, timeout: float) -> CommandResult:
        """Runs `command` in one of the connection's long-lived shells (ssh_shell.py), opening one if none is
        idle. Retried on a fresh shell (and connection) only when the command was never sent."""
        for attempt in (1, 2):
            entry = await self.pool._get(self._key)
            async with entry.sessions:
                try:
                    # Part of setting up the connection, like connecting: bounded by connect_timeout.
                    shell = await self._shell(entry, self.pool.connect_timeout)
                except TimeoutError:  # the login shell's start-up files did not finish in time
                    wait = self.pool.connect_timeout
                    raise self._error(
                        f"no shell within {wait:g} s (the login shell's start-up files?)"
                    ) from None
                except (asyncssh.Error, OSError) as exc:
                    # The command never started, so opening a fresh connection and trying again is safe.
                    if attempt == 1 and _connection_failure(entry, exc):
                        await self.pool._discard(self._key, entry)
                        continue
                    raise self._error(f"cannot start command: {_reason(exc)}") from exc
                try:
                    result = await asyncio.wait_for(shell.run(command), timeout)
                except ShellLostError as exc:
                    shell.close()
                    if not exc.started and attempt == 1:
                        if entry.is_closed():
                            await self.pool._discard(self._key, entry)
                        continue
                    raise self._error(f"connection lost while running command: {_describe(command)}") from exc
                except BaseException as exc:
                    await self._kill(entry, shell.proc, shell.pgid)
                    if isinstance(exc, TimeoutError):
                        raise self._error(
                            f"command timed out after {timeout:g} s: {_describe(command)}"
                        ) from None
                    raise
                entry.shells.append(shell)
                return result
        raise AssertionError("unreachable")

    @staticmethod
    async def _shell(entry: _Connection, timeout: float) -> Shell:
        """An idle shell of the connection, or a new one."""
        while entry.shells:
            shell = entry.shells.pop()
            if shell.alive():
                return shell
            shell.close()
        return await Shell.start(entry.conn, timeout)

    async def _kill(
        self, entry: _Connection, proc: asyncssh.SSHClientProcess[bytes], pgid: int | None
    ) -> None:
        """SIGKILL the command's process group (from a second channel), then close its channel."""
        if pgid is not None and not entry.is_closed():
            async with entry.kill_lock:
                with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
                    await asyncio.wait_for(
                        entry.conn.run(f"kill -KILL -- -{pgid}", stdin=asyncssh.DEVNULL, check=False),
                        _CLOSE_GRACE,
                    )
        proc.close()
        with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
            await asyncio.wait_for(proc.wait_closed(), _CLOSE_GRACE)

    async def _sftp(
        self,
        action: str,
        path: str,
        op: Callable[[asyncssh.SFTPClient], Awaitable[T]],
        *,
        retry: bool = True,
    ) -> T:
        for attempt in (1, 2):
            entry = await self.pool._get(self._key)
            try:
                sftp = await entry.sftp_client()
            except (asyncssh.Error, OSError) as exc:
                if attempt == 1 and _connection_failure(entry, exc):
                    await self.pool._discard(self._key, entry)
                    continue
                raise self._error(f"cannot start SFTP: {_reason(exc)}") from exc
            try:
                return await op(sftp)
            except (asyncssh.Error, OSError) as exc:
                if retry and attempt == 1 and _connection_failure(entry, exc):
                    await self.pool._discard(self._key, entry)
                    continue
                raise self._error(f"cannot {action} {path}: {_reason(exc)}") from exc
        raise AssertionError("unreachable")

    async def read_file(self, path: str, offset: int = 0, limit: int | None = None) -> bytes:
        if offset < 0 or (limit is not None and limit < 0):
            raise ValueError("offset and limit must not be negative")

        async def op(sftp: asyncssh.SFTPClient) -> bytes:
            async with sftp.open(path, "rb") as f:
                size = limit
                if size is None:  # to the end as it is now (asyncssh's read(-1) fails past the end)
                    size = max(0, ((await f.stat()).size or 0) - offset)
                if size == 0:
                    return b""
                await f.seek(offset)
                data = await f.read(size)
                assert isinstance(data, bytes)  # binary mode
                return data

        return await self._sftp("read", path, op)

    async def file_size(self, path: str) -> int | None:
        async def op(sftp: asyncssh.SFTPClient) -> int | None:
            try:
                attrs = await sftp.stat(path)
            except asyncssh.SFTPNoSuchFile:
                return None
            return attrs.size

        return await self._sftp("stat", path, op)

    async def write_file(self, path: str, data: bytes) -> None:
        async def op(sftp: asyncssh.SFTPClient) -> None:
            async with sftp.open(path, "wb") as f:
                await f.write(data)

        await self._sftp("write", path, op)

    async def rename(self, src: str, dst: str) -> None:
        async def op(sftp: asyncssh.SFTPClient) -> None:
            await sftp.posix_rename(src, dst)

        await self._sftp("rename", f"{src} to {dst}", op, retry=False)

    async def remove(self, path: str) -> None:
        async def op(sftp: asyncssh.SFTPClient) -> None:
            with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                await sftp.remove(path)

        await self._sftp("remove", path, op)

    async def unix_request(self, path: str, payload: bytes, timeout: float) -> bytes:
        """Opens a direct stream-local channel (sshd's `AllowStreamLocalForwarding`, on by default) to the unix
        socket `path`, writes `payload`, half-closes and reads until EOF."""

        async def exchange(entry: _Connection) -> bytes:
            reader, writer = await entry.conn.open_unix_connection(path, encoding=None)
            try:
                writer.write(payload)
                writer.write_eof()
                data = await reader.read()
                assert isinstance(data, bytes)  # encoding=None
                return data
            finally:
                writer.close()

        for attempt in (1, 2):
            entry = await self.pool._get(self._key)
            try:
                return await asyncio.wait_for(exchange(entry), timeout)
            except TimeoutError:
                raise self._error(f"no answer from {path} within {timeout:g} s") from None
            except (asyncssh.Error, OSError) as exc:
                # A dead pooled connection: the request never reached the socket, so one retry is safe.
                if attempt == 1 and _connection_failure(entry, exc):
                    await self.pool._discard(self._key, entry)
                    continue
                raise self._error(f"cannot talk to socket {path}: {_reason(exc)}") from exc
        raise AssertionError("unreachable")
