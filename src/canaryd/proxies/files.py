"""Files canaryd keeps beside a proxy's configuration: installing one (test, reload, the previous file back on
any failure), writing one atomically, putting a refused one back."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable

from canaryd.transports.base import Transport


def sibling_path(config_path: str, suffix: str) -> str:
    """`.<name>.canaryd-<suffix>` in the configuration file's directory: the same file system, so a rename
    onto the live file is atomic, and a dot name, which no proxy's include pattern loads."""
    directory, _, name = config_path.rpartition("/")
    return f"{directory}/.{name}.canaryd-{suffix}"


def temp_path(config_path: str) -> str:
    """A fresh temporary file beside the configuration file."""
    return sibling_path(config_path, f"new-{secrets.token_hex(4)}")


async def read_optional(transport: Transport, path: str) -> bytes | None:
    """The file's bytes, or None when it does not exist."""
    if await transport.file_size(path) is None:
        return None
    return await transport.read_file(path)


async def write_atomically(transport: Transport, path: str, data: bytes) -> None:
    """Writes a temp file beside `path` and renames it over `path`: readers see the old or the new bytes."""
    temp = temp_path(path)
    try:
        await transport.write_file(temp, data)
        await transport.rename(temp, path)
    except BaseException:
        await transport.remove(temp)
        raise


async def put_back(transport: Transport, config_path: str, previous: bytes | None) -> None:
    """Restores the previous bytes (atomically, through a temp file), or removes the file if there was none."""
    if previous is None:
        await transport.remove(config_path)
        return
    await write_atomically(transport, config_path, previous)


async def install(
    transport: Transport,
    path: str,
    data: bytes | None,
    previous: bytes | None,
    load: Callable[[], Awaitable[None]],
) -> None:
    """Puts `data` at `path` (None: removes the file), then runs `load` (the proxy's test and reload). On any
    failure of either, a cancellation included, `previous` is put back and the error is raised again: a file
    that did not make it through test and reload never stays in place.

    `previous` is what the caller read before (it may also need it to decide what to render)."""
    try:
        if data is None:
            await transport.remove(path)
        else:
            await write_atomically(transport, path, data)
        await load()
    except BaseException:
        await put_back(transport, path, previous)
        raise


#: One change at a time per proxy file within a process and event loop (an asyncio.Lock belongs to one loop);
#: across processes the engine's per-deployment lock keeps changes apart, and each writes its own temp file.
_file_locks: dict[tuple[int, int, str], asyncio.Lock] = {}


def file_lock(server_id: int, config_path: str) -> asyncio.Lock:
    """The lock serialising changes to one proxy file (on the proxy server `server_id`) in this event loop."""
    key = (id(asyncio.get_running_loop()), server_id, config_path)
    return _file_locks.setdefault(key, asyncio.Lock())
