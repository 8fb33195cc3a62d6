"""Files canaryd keeps beside a proxy's configuration: installing one (test, reload, the previous file back on
any failure), writing one atomically, putting a refused one back."""

from __future__ import annotations

import asyncio
import secrets
import shlex
from collections.abc import Awaitable, Callable

from canaryd.transports.base import Transport, TransportError


def sibling_path(config_path: str, suffix: str, work_dir: str | None = None) -> str:
    """`.<name>.canaryd-<suffix>` in the configuration file's directory (or in `work_dir`, a directory
    inside it): the same file system, so a rename onto the live file is atomic, and a dot name, which no
    proxy's include pattern loads."""
    directory, _, name = config_path.rpartition("/")
    return f"{work_dir or directory}/.{name}.canaryd-{suffix}"


def work_dir_of(config_path: str) -> str:
    """`.canaryd/` in the configuration file's directory: where canaryd keeps its temp and state files for a
    proxy that reloads on *any* change in that directory (Traefik's file provider), so that only the rename
    of the finished file is seen there (see traefik.py)."""
    return f"{config_path.rpartition('/')[0]}/.canaryd"


def temp_path(config_path: str, work_dir: str | None = None) -> str:
    """A fresh temporary file beside the configuration file (or in `work_dir`)."""
    return sibling_path(config_path, f"new-{secrets.token_hex(4)}", work_dir)


async def ensure_dir(transport: Transport, path: str) -> None:
    """Creates the directory `path` when it does not exist (raises TransportError when that fails)."""
    if await transport.file_size(path) is not None:
        return
    result = await transport.run(f"mkdir -p {shlex.quote(path)}", timeout=30)
    if not result.ok:
        raise TransportError(f"cannot create {path}: {result.tail()}")


async def read_optional(transport: Transport, path: str) -> bytes | None:
    """The file's bytes, or None when it does not exist."""
    if await transport.file_size(path) is None:
        return None
    return await transport.read_file(path)


async def write_atomically(transport: Transport, path: str, data: bytes, work_dir: str | None = None) -> None:
    """Writes a temp file beside `path` (or in `work_dir`, created if needed) and renames it over `path`:
    readers see the old or the new bytes."""
    if work_dir is not None:
        await ensure_dir(transport, work_dir)
    temp = temp_path(path, work_dir)
    try:
        await transport.write_file(temp, data)
        await transport.rename(temp, path)
    except BaseException:
        await transport.remove(temp)
        raise


async def put_back(
    transport: Transport, config_path: str, previous: bytes | None, work_dir: str | None = None
) -> None:
    """Restores the previous bytes (atomically, through a temp file), or removes the file if there was none."""
    if previous is None:
        await transport.remove(config_path)
        return
    await write_atomically(transport, config_path, previous, work_dir)


async def install(
    transport: Transport,
    path: str,
    data: bytes | None,
    previous: bytes | None,
    load: Callable[[], Awaitable[None]],
    work_dir: str | None = None,
) -> None:
    """Puts `data` at `path` (None: removes the file), then runs `load` (the proxy's test and reload). On any
    failure of either, a cancellation included, `previous` is put back and the error is raised again: a file
    that did not make it through test and reload never stays in place.

    `previous` is what the caller read before (it may also need it to decide what to render)."""
    try:
        if data is None:
            await transport.remove(path)
        else:
            await write_atomically(transport, path, data, work_dir)
        await load()
    except BaseException:
        await put_back(transport, path, previous, work_dir)
        raise


#: One change at a time per proxy file within a process and event loop (an asyncio.Lock belongs to one loop);
#: across processes the engine's per-deployment lock keeps changes apart, and each writes its own temp file.
_file_locks: dict[tuple[int, int, str], asyncio.Lock] = {}


def file_lock(server_id: int, config_path: str) -> asyncio.Lock:
    """The lock serialising changes to one proxy file (on the proxy server `server_id`) in this event loop."""
    key = (id(asyncio.get_running_loop()), server_id, config_path)
    return _file_locks.setdefault(key, asyncio.Lock())
