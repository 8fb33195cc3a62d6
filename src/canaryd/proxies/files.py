"""Files canaryd keeps beside a proxy's configuration: installing one (test, reload, the previous file back on
any failure), writing one atomically, putting a refused one back."""

from __future__ import annotations

import asyncio
import secrets
import shlex
from collections.abc import Awaitable, Callable

from canaryd.transports.base import CommandResult, Transport, TransportError


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


#: Largest file `install_in_one_command` sends inside its command: the script is one argument of
#: `/bin/sh -c`, and Linux refuses a single argument over 128 KiB. Larger files go through `install`.
INLINE_LIMIT = 64 * 1024
#: What the script prints on stdout: the step that failed, or that everything passed.
FAILED_MARK = "canaryd-failed "
INSTALLED_MARK = "canaryd-installed"


def inlinable(data: bytes | None) -> bool:
    """Whether `data` can travel as a here-document inside a command: UTF-8 text of lines (it ends with a
    newline), no NUL byte, small enough (INLINE_LIMIT). None (removing the file) always can."""
    if data is None:
        return True
    if len(data) > INLINE_LIMIT or not data.endswith(b"\n") or b"\0" in data:
        return False
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _names(path: str, token: str) -> str:
    """The script's file names as shell assignments: the live file, the new one (a temp beside it), the
    previous one kept as a hard link (`keep`), and a marker saying there was no previous file (`gone`)."""
    names = {
        "live": path,
        "new": sibling_path(path, f"new-{token}"),
        "keep": sibling_path(path, f"old-{token}"),
        "gone": sibling_path(path, f"none-{token}"),
    }
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in names.items())


# `back` puts the previous file back; `fail STEP` does so and ends the script with the step's status;
# `fail_early STEP` is for before anything was kept: it cleans up without touching the live file (a half-made
# copy must not go back).
_FAILURE_FUNCTIONS = (
    'back() { if [ -e "$keep" ]; then mv -f "$keep" "$live"; elif [ -e "$gone" ]; then rm -f "$live"; fi; '
    'rm -f "$new" "$keep" "$keep.cp" "$gone"; }',
    'fail() { s=$?; back; echo "' + FAILED_MARK + '$1"; exit "$s"; }',
    'fail_early() { s=$?; rm -f "$new" "$keep" "$keep.cp" "$gone"; echo "'
    + FAILED_MARK
    + '$1"; exit "$s"; }',
)


def _here_document(data: bytes | None, token: str) -> tuple[str, str]:
    """The here-document's delimiter and text for `data`; ValueError when they cannot be sent safely."""
    if not token.isalnum():
        raise ValueError("token must be letters and digits")
    if not inlinable(data):
        raise ValueError("data cannot be sent inside a command (see inlinable)")
    delimiter = f"CANARYD_EOF_{token}"
    text = data.decode() if data is not None else ""
    if any(line == delimiter for line in text.split("\n")):
        raise ValueError("data contains the here-document's delimiter")
    return delimiter, text


def install_script(
    path: str,
    data: bytes | None,
    test_command: str | None,
    reload_command: str,
    token: str,
    before_reload: str = "",
) -> str:
    """One shell script that does what `install` does over many round trips: write `data` (a here-document)
    to a temp file, keep the live file (a hard link, or a copy) or note that there was none, rename the new
    file over the live one (or remove it, for None), test, run `before_reload` (shell lines that may print on
    stdout), reload. A step that fails puts the previous file back (or removes the new one) and ends the
    script with that step's status, printing `canaryd-failed <step>`; success prints `canaryd-installed`.
    The operator's commands run as `( eval COMMAND )` (a subshell: their `exit` cannot skip the put-back)
    with stdout sent to stderr, so that stdout carries only the script's own lines. `token`: hex, fresh per
    call (names the temp files and ends the here-document)."""
    delimiter, text = _here_document(data, token)
    lines = [
        _names(path, token),
        f"test={shlex.quote(test_command or '')} reload={shlex.quote(reload_command)}",
        *_FAILURE_FUNCTIONS,
    ]
    if data is None:
        lines.append('if [ -e "$live" ]; then mv -f "$live" "$keep"; else : >"$gone"; fi || fail_early keep')
    else:
        lines += [
            f"cat >\"$new\" <<'{delimiter}' || fail_early write",
            text + delimiter,
            'if [ -e "$live" ]; then ln -f "$live" "$keep" 2>/dev/null || '
            '{ cp -p "$live" "$keep.cp" && mv -f "$keep.cp" "$keep"; }; else : >"$gone"; fi || fail_early keep',
            'mv -f "$new" "$live" || fail install',
        ]
    if test_command:
        lines.append('( eval "$test" ) </dev/null >&2 || fail test')
    if before_reload:
        lines.append(before_reload)
    lines += [
        '( eval "$reload" ) </dev/null >&2 || fail reload',
        'rm -f "$keep" "$gone"',
        f"echo {INSTALLED_MARK}",
    ]
    return "\n".join(lines) + "\n"


def put_back_script(path: str, token: str) -> str:
    """After an `install_script` whose outcome is unknown (timed out, cancelled, connection lost): the kept
    previous file back, or the new file removed when there was none; nothing when the script never kept
    anything (the live file was not touched) or had finished (it removed what it kept)."""
    return (
        f"{_names(path, token)}\n"
        'if [ -e "$keep" ]; then mv -f "$keep" "$live"; elif [ -e "$gone" ]; then rm -f "$live"; fi\n'
        'rm -f "$new" "$keep" "$keep.cp" "$gone"\n'
    )


async def install_in_one_command(
    transport: Transport,
    path: str,
    data: bytes | None,
    test_command: str | None,
    reload_command: str,
    timeout: float,
    before_reload: str = "",
) -> CommandResult:
    """`install_script` in one command: one round trip instead of a read, a write, a rename and two commands
    (each one round trip or more over SSH). The script puts the previous file back itself when a step fails;
    when its outcome is unknown (an exception here, a cancellation included), `put_back_script` runs before
    the error is raised again. Returns the script's result for the caller to read (`failed_step`)."""
    token = secrets.token_hex(8)
    script = install_script(path, data, test_command, reload_command, token, before_reload)
    try:
        return await transport.run(script, timeout)
    except BaseException:
        await transport.run(put_back_script(path, token), timeout)
        raise


def failed_step(result: CommandResult) -> str | None:
    """The step an `install_script` reported as failed (write, keep, install, test, reload); "unknown" when
    it failed without saying (it could not start); None when it succeeded."""
    if result.ok and INSTALLED_MARK in result.stdout.splitlines():
        return None
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(FAILED_MARK):
            return line.removeprefix(FAILED_MARK).strip()
    return "unknown"


#: One change at a time per proxy file within a process and event loop (an asyncio.Lock belongs to one loop);
#: across processes the engine's per-deployment lock keeps changes apart, and each writes its own temp file.
_file_locks: dict[tuple[int, int, str], asyncio.Lock] = {}


def file_lock(server_id: int, config_path: str) -> asyncio.Lock:
    """The lock serialising changes to one proxy file (on the proxy server `server_id`) in this event loop."""
    key = (id(asyncio.get_running_loop()), server_id, config_path)
    return _file_locks.setdefault(key, asyncio.Lock())
