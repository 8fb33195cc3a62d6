"""Files canaryd keeps beside a proxy's configuration file, and putting a refused file back."""

from __future__ import annotations

import secrets

from canaryd.transports.base import Transport


def sibling_path(config_path: str, suffix: str) -> str:
    """`.<name>.canaryd-<suffix>` in the configuration file's directory: the same file system, so a rename
    onto the live file is atomic, and a dot name, which no proxy's include pattern loads."""
    directory, _, name = config_path.rpartition("/")
    return f"{directory}/.{name}.canaryd-{suffix}"


def temp_path(config_path: str) -> str:
    """A fresh temporary file beside the configuration file."""
    return sibling_path(config_path, f"new-{secrets.token_hex(4)}")


async def put_back(transport: Transport, config_path: str, previous: bytes | None) -> None:
    """Restores the previous bytes (atomically, through a temp file), or removes the file if there was none."""
    if previous is None:
        await transport.remove(config_path)
        return
    temp = temp_path(config_path)
    await transport.write_file(temp, previous)
    await transport.rename(temp, config_path)
