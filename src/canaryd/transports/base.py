"""The seam between canaryd and the machines it manages: run a command, read and write files."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class CommandResult:
    exit_status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def tail(self, limit: int = 400) -> str:
        """The end of the output, for error messages."""
        return (self.stderr.strip() or self.stdout.strip())[-limit:]


class TransportError(Exception):
    """The server could not be reached or the operation could not be carried out.

    `permanent`: trying again cannot help (the server's host key is refused); a person must act first.
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Transport(Protocol):
    """How canaryd reaches one server. Commands are shell strings whose variable parts are already quoted."""

    async def run(self, command: str, timeout: float) -> CommandResult: ...

    async def read_file(self, path: str, offset: int = 0, limit: int | None = None) -> bytes: ...

    async def file_size(self, path: str) -> int | None: ...

    async def write_file(self, path: str, data: bytes) -> None: ...

    async def rename(self, src: str, dst: str) -> None: ...

    async def remove(self, path: str) -> None: ...

    async def unix_request(self, path: str, payload: bytes, timeout: float) -> bytes:
        """Sends `payload` to the unix stream socket `path` on the server and reads the answer until EOF
        (e.g. one command to HAProxy's admin socket)."""
        ...
