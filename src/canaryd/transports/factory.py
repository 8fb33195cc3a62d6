"""Pick the transport for a server from its record: `local` or `ssh`."""

from __future__ import annotations

from canaryd.transports.base import Transport, TransportError
from canaryd.transports.local import LocalTransport
from canaryd.transports.ssh import SshPool


class TransportFactory:
    """Made once at start-up with the process's SSH pool (None when SSH is not configured)."""

    def __init__(self, ssh_pool: SshPool | None) -> None:
        self.ssh_pool = ssh_pool
        self.local = LocalTransport()

    def for_server(self, transport: str, host: str, ssh_port: int, ssh_user: str) -> Transport:
        if transport == "local":
            return self.local
        if transport == "ssh":
            if self.ssh_pool is None:
                raise TransportError(
                    f"ssh {host}:{ssh_port}: SSH is not configured: set CANARYD_SSH_KNOWN_HOSTS"
                )
            return self.ssh_pool.transport(host, ssh_port, ssh_user)
        raise TransportError(f"unknown transport {transport!r}: expected 'local' or 'ssh'")

    async def close(self) -> None:
        if self.ssh_pool is not None:
            await self.ssh_pool.close()
