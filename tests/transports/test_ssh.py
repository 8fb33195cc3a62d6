"""SshPool and SshTransport against a real OpenSSH sshd on 127.0.0.5."""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from canaryd.transports.base import Transport, TransportError
from canaryd.transports.factory import TransportFactory
from canaryd.transports.local import LocalTransport
from canaryd.transports.ssh import SshPool, SshTransport

if TYPE_CHECKING:  # the sshd and ssh_pool fixtures come from tests/conftest.py's pytest_plugins
    from tests.fixtures.sshd import SshServer


HOSTILE = 'it\'s $(touch PWNED) `touch PWNED` ; rm -rf ./nope "q" \\ * \n\t\xff end'


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


@pytest.fixture
def ssh(ssh_pool: SshPool, sshd: SshServer) -> SshTransport:
    """A transport to the test sshd through a fresh pool."""
    return ssh_pool.transport(sshd.host, sshd.port, sshd.user)


def test_is_a_transport(ssh: SshTransport) -> None:
    """SshTransport satisfies the Transport protocol."""
    transport: Transport = ssh
    assert transport is not None


async def test_run_returns_output_and_status(ssh: SshTransport) -> None:
    """A command's stdout, stderr and exit status come back, with nothing of canaryd's wrapper in them."""
    result = await ssh.run("echo out; echo err >&2; exit 3", timeout=10)
    assert (result.exit_status, result.stdout, result.stderr) == (3, "out\n", "err\n")
    result = await ssh.run("id -u; cat; echo done", timeout=10)
    assert (result.exit_status, result.stdout) == (0, "0\ndone\n")


async def test_commands_share_a_shell_not_its_state(ssh: SshTransport) -> None:
    """Commands go to one long-lived shell (one process group), yet each runs in its own /bin/sh -c:
    a cd or a variable does not reach the next command; output without a final newline comes back exact."""
    first = await ssh.run("ps -o pgid= -p $$; cd /tmp; X=1; printf out; printf err >&2", timeout=10)
    second = await ssh.run("ps -o pgid= -p $$; pwd; echo ${X:-unset}", timeout=10)
    pgid, out = first.stdout.split("\n", 1)
    assert (out, first.stderr) == ("out", "err")
    assert second.stdout.split("\n")[0] == pgid
    assert second.stdout.split("\n")[1:] == ["/root", "unset", ""]


async def test_run_uses_posix_sh(ssh: SshTransport) -> None:
    """Commands run under /bin/sh, whatever the login shell, like the local transport."""
    result = await ssh.run('readlink -f /proc/$$/exe; printf "%s" "$0"', timeout=10)
    expected = os.path.realpath("/bin/sh")
    assert result.stdout == f"{expected}\n/bin/sh"


async def test_killed_command_has_negative_status(ssh: SshTransport) -> None:
    """A command ended by a signal reports minus the signal number, as the local transport does."""
    assert (await ssh.run("kill -9 $$", timeout=10)).exit_status == -9
    assert (await LocalTransport().run("kill -9 $$", timeout=10)).exit_status == -9


async def test_timeout_kills_command_and_children(ssh: SshTransport, tmp_path: Path) -> None:
    """On timeout the remote shell and its children are killed; the error names host and command."""
    pidfile = tmp_path / "child.pid"
    command = f"sleep 60 & echo $! > {shlex.quote(str(pidfile))}; wait"
    started = time.monotonic()
    with pytest.raises(
        TransportError, match=r"^ssh 127\.0\.0\.5:\d+: command timed out after 0\.5 s: sleep 60"
    ):
        await ssh.run(command, timeout=0.5)
    assert time.monotonic() - started < 5
    assert await _wait_dead(int(pidfile.read_text()))
    assert (await ssh.run("echo still usable", timeout=10)).stdout == "still usable\n"


async def test_daemon_holding_stdout_is_bounded_by_timeout(ssh: SshTransport, tmp_path: Path) -> None:
    """A background process that keeps stdout open cannot hang run(): the timeout ends it."""
    pidfile = tmp_path / "daemon.pid"
    started = time.monotonic()
    with pytest.raises(TransportError, match="timed out"):
        await ssh.run(f"sleep 60 & echo $! > {shlex.quote(str(pidfile))}", timeout=1)
    assert time.monotonic() - started < 5
    assert await _wait_dead(int(pidfile.read_text()))


async def test_cancelled_run_kills_command(ssh: SshTransport, tmp_path: Path) -> None:
    """Cancelling run() kills the remote command too."""
    pidfile = tmp_path / "shell.pid"
    task = asyncio.create_task(ssh.run(f"echo $$ > {shlex.quote(str(pidfile))}; sleep 60", timeout=60))
    while not pidfile.exists() or not pidfile.read_text().strip():
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _wait_dead(int(pidfile.read_text()))


async def test_file_roundtrip(ssh: SshTransport, tmp_path: Path) -> None:
    """write → rename → size → read with offset and limit → remove, over SFTP."""
    tmp, final = str(tmp_path / "f.tmp"), str(tmp_path / "f")
    await ssh.write_file(tmp, b"0123456789")
    await ssh.rename(tmp, final)
    assert await ssh.file_size(tmp) is None
    assert await ssh.file_size(final) == 10
    assert await ssh.read_file(final) == b"0123456789"
    assert await ssh.read_file(final, offset=4) == b"456789"
    assert await ssh.read_file(final, offset=4, limit=3) == b"456"
    assert await ssh.read_file(final, offset=20) == b""
    await ssh.write_file(tmp, b"new")
    await ssh.rename(tmp, final)
    assert await ssh.read_file(final) == b"new"
    await ssh.remove(final)
    assert await ssh.file_size(final) is None
    assert os.listdir(tmp_path) == []


async def test_large_file(ssh: SshTransport, tmp_path: Path) -> None:
    """A file bigger than one SFTP read or write survives the round trip."""
    data = os.urandom(3 * 1024 * 1024 + 17)
    await ssh.write_file(str(tmp_path / "big"), data)
    assert await ssh.read_file(str(tmp_path / "big")) == data
    assert (
        await ssh.read_file(str(tmp_path / "big"), offset=1_000_000, limit=70_000)
        == data[1_000_000:1_070_000]
    )


async def test_missing_files(ssh: SshTransport, tmp_path: Path) -> None:
    """Reading a missing file raises with the host in the message; its size is None; removing it is fine."""
    missing = str(tmp_path / "missing")
    with pytest.raises(TransportError, match=r"^ssh 127\.0\.0\.5:\d+: cannot read .*missing"):
        await ssh.read_file(missing)
    assert await ssh.file_size(missing) is None
    await ssh.remove(missing)
    with pytest.raises(TransportError, match="cannot write"):
        await ssh.write_file(str(tmp_path / "nodir" / "f"), b"x")
    with pytest.raises(TransportError, match="cannot rename"):
        await ssh.rename(missing, str(tmp_path / "other"))


async def test_hostile_name_and_content_are_data(ssh: SshTransport, tmp_path: Path) -> None:
    """A file name and content full of shell syntax are stored verbatim and never executed."""
    path = str(tmp_path / HOSTILE.replace("/", "_"))
    data = HOSTILE.encode()
    await ssh.write_file(path, data)
    await ssh.rename(path, path + ".2")
    assert await ssh.read_file(path + ".2") == data
    assert await ssh.file_size(path + ".2") == len(data)
    await ssh.remove(path + ".2")
    assert os.listdir(tmp_path) == []


async def test_quoted_hostile_argument_is_data(ssh: SshTransport, tmp_path: Path) -> None:
    """A shell-quoted hostile argument reaches the remote command as one literal string."""
    result = await ssh.run(f"cd {shlex.quote(str(tmp_path))} && printf %s {shlex.quote(HOSTILE)}", timeout=10)
    assert result.stdout == HOSTILE
    assert os.listdir(tmp_path) == []


async def test_concurrent_runs_share_one_connection(ssh_pool: SshPool, sshd: SshServer) -> None:
    """20 concurrent first uses open one connection and run in parallel within sshd's MaxSessions."""
    transport = ssh_pool.transport(sshd.host, sshd.port, sshd.user)
    started = time.monotonic()
    results = await asyncio.gather(*(transport.run(f"sleep 0.5; echo {i}", timeout=30) for i in range(20)))
    elapsed = time.monotonic() - started
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(20)]
    assert ssh_pool.connections_opened == 1
    assert ssh_pool.open_connections == 1
    assert elapsed < 20 * 0.5 * 0.6  # they ran side by side (8 at a time), not one after another
    conn = await ssh_pool.connection(sshd.host, sshd.port, sshd.user)
    await transport.write_file("/dev/null", b"")
    await ssh_pool.transport(sshd.host, sshd.port, sshd.user).run("true", timeout=10)
    assert await ssh_pool.connection(sshd.host, sshd.port, sshd.user) is conn
    assert ssh_pool.connections_opened == 1


async def test_unknown_host_key_refused(sshd: SshServer, tmp_path: Path) -> None:
    """A server whose key is not in known_hosts is refused, with the ssh-keyscan line to add it."""
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    pool = SshPool(str(known_hosts), [sshd.client_key], connect_timeout=5)
    try:
        with pytest.raises(TransportError) as err:
            await pool.transport(sshd.host, sshd.port, sshd.user).run("true", timeout=10)
    finally:
        await pool.close()
    message = str(err.value)
    assert message.startswith(f"ssh {sshd.host}:{sshd.port}: host key verification failed")
    assert f"ssh-keyscan -p {sshd.port} {sshd.host} >> {known_hosts}" in message
    assert "unknown host" in message and "CHANGED" not in message
    assert err.value.permanent, "a refused host key must not be retried as transient"
    assert pool.connections_opened == 0


async def test_wrong_host_key_refused(sshd: SshServer, tmp_path: Path) -> None:
    """A server presenting a different key than known_hosts holds for it is refused."""
    known_hosts = sshd.write_wrong_known_hosts(str(tmp_path / "known_hosts"))
    pool = SshPool(known_hosts, [sshd.client_key], connect_timeout=5)
    try:
        with pytest.raises(
            TransportError, match=r"^ssh 127\.0\.0\.5:\d+: host key verification failed"
        ) as err:
            await pool.transport(sshd.host, sshd.port, sshd.user).write_file(str(tmp_path / "x"), b"x")
    finally:
        await pool.close()
    assert "HOST KEY CHANGED" in str(err.value) and "man-in-the-middle" in str(err.value)
    assert err.value.permanent
    assert not (tmp_path / "x").exists()


async def test_missing_known_hosts_file(sshd: SshServer, tmp_path: Path) -> None:
    """A missing known_hosts file is an error that says how to add the host."""
    missing = str(tmp_path / "nope" / "known_hosts")
    pool = SshPool(missing, [sshd.client_key])
    try:
        with pytest.raises(TransportError) as err:
            await pool.transport(sshd.host, sshd.port, sshd.user).run("true", timeout=10)
    finally:
        await pool.close()
    assert f"known_hosts file {missing} does not exist" in str(err.value)
    assert f"ssh-keyscan -p {sshd.port} {sshd.host} >> {missing}" in str(err.value)


def test_known_hosts_is_required() -> None:
    """An SshPool cannot be made without a known_hosts file: host keys are always verified."""
    with pytest.raises(ValueError, match="known_hosts is required"):
        SshPool("")


async def test_wrong_client_key_refused(sshd: SshServer, tmp_path: Path) -> None:
    """A client key the server does not accept gives an authentication error naming the user."""
    key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    pool = SshPool(sshd.known_hosts, [str(key)], connect_timeout=5)
    try:
        with pytest.raises(TransportError, match=r"authentication failed for user root"):
            await pool.transport(sshd.host, sshd.port, sshd.user).run("true", timeout=10)
    finally:
        await pool.close()


async def test_connection_refused(ssh_pool: SshPool, sshd: SshServer) -> None:
    """A port nobody listens on gives a connect error with host and port."""
    with pytest.raises(TransportError, match=r"^ssh 127\.0\.0\.5:1: cannot connect"):
        await ssh_pool.transport(sshd.host, 1, sshd.user).run("true", timeout=10)


async def test_reconnect_after_server_drops_connection(
    ssh_pool: SshPool, ssh: SshTransport, sshd: SshServer
) -> None:
    """After the server kills the connection, the next command and file operation reconnect once and work."""
    assert (await ssh.run("echo one", timeout=10)).stdout == "one\n"
    assert sshd.drop_connections() >= 1
    assert (await ssh.run("echo two", timeout=10)).stdout == "two\n"
    assert ssh_pool.connections_opened == 2
    assert sshd.drop_connections() >= 1
    assert await ssh.file_size("/etc/hostname") is not None
    assert ssh_pool.connections_opened == 3


async def test_reconnect_after_client_closes_connection(
    ssh_pool: SshPool, ssh: SshTransport, sshd: SshServer
) -> None:
    """A pooled connection that was closed is replaced on next use."""
    await ssh.run("true", timeout=10)
    conn = await ssh_pool.connection(sshd.host, sshd.port, sshd.user)
    conn.close()
    await conn.wait_closed()
    assert (await ssh.run("echo back", timeout=10)).stdout == "back\n"
    assert await ssh_pool.connection(sshd.host, sshd.port, sshd.user) is not conn
    assert ssh_pool.connections_opened == 2


async def test_drop_during_command_is_an_error(ssh: SshTransport, sshd: SshServer) -> None:
    """A connection lost while a command runs is a TransportError, not a retry that would run it twice."""
    await ssh.run("true", timeout=10)
    task = asyncio.create_task(ssh.run("sleep 5", timeout=30))
    await asyncio.sleep(0.5)
    sshd.drop_connections()
    with pytest.raises(TransportError, match=r"^ssh 127\.0\.0\.5:\d+: "):
        await task


async def test_closed_pool_refuses(sshd: SshServer) -> None:
    """After close() the pool opens no more connections."""
    pool = SshPool(sshd.known_hosts, [sshd.client_key])
    transport = pool.transport(sshd.host, sshd.port, sshd.user)
    await transport.run("true", timeout=10)
    await pool.close()
    assert pool.open_connections == 0
    with pytest.raises(TransportError, match="closed"):
        await transport.run("true", timeout=10)


async def test_factory(sshd: SshServer) -> None:
    """The factory hands out one shared LocalTransport and pooled SSH transports."""
    pool = SshPool(sshd.known_hosts, [sshd.client_key])
    factory = TransportFactory(pool)
    try:
        local = factory.for_server("local", "127.0.0.1", 22, "root")
        assert isinstance(local, LocalTransport)
        assert factory.for_server("local", "127.0.0.9", 22, "x") is local
        remote = factory.for_server("ssh", sshd.host, sshd.port, sshd.user)
        assert isinstance(remote, SshTransport)
        assert (await remote.run("echo via factory", timeout=10)).stdout == "via factory\n"
        with pytest.raises(TransportError, match="unknown transport 'telnet'"):
            factory.for_server("telnet", sshd.host, 23, "root")
    finally:
        await factory.close()
    assert pool.open_connections == 0


async def test_factory_without_ssh() -> None:
    """Without an SSH pool, ssh servers are refused with the setting to fix it; local still works."""
    factory = TransportFactory(None)
    with pytest.raises(TransportError, match="SSH is not configured: set CANARYD_SSH_KNOWN_HOSTS"):
        factory.for_server("ssh", "127.0.0.5", 22, "root")
    assert isinstance(factory.for_server("local", "127.0.0.1", 22, "root"), LocalTransport)
    await factory.close()
