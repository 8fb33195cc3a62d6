"""Which nginx worker processes still accept new connections, read from the proxy server's /proc.

Why: after `nginx -s reload` the master starts new workers with the new configuration, sleeps 100 ms
(`ngx_msleep(100)` in ngx_master_process_cycle) and only then tells the old workers to shut down. Until an
old worker has that signal it keeps accepting connections and serves them with the *old* upstream weights,
so the first answer from a new worker proves nothing about the next connection. An old worker that got it
renames itself `nginx: worker process is shutting down` and, in the same step and before it returns to its
event loop, closes its listening sockets (ngx_worker_process_cycle); then it finishes what it has in flight
and exits. So once every worker that was accepting before the reload has either exited or carries that title,
every new connection is served by the new configuration. That is what "live" means for nginx.

How the workers are found: the generation probe's answer names the worker that served it
(`X-Canaryd-Worker: $pid`); its parent in /proc is the master, whose children are all the workers. Every
step is checked (the master's title, the worker among its children), so a proxy in another pid namespace
than the transport (nginx in a container, SSH to its host) or a system without /proc yields None, and the
caller falls back to holding the new generation's answers for a settle time. /proc is read through the
transport: on a remote proxy server over the pooled SSH connection's SFTP channel, concurrently. The
snapshot is taken while the file is written and tested and is never waited for: when it is not ready when
the test has passed, the reload goes ahead and the settle time is the proof.
"""

from __future__ import annotations

import asyncio

import httpx

from canaryd.transports.base import Transport, TransportError

#: The response header of the generation probe naming the nginx worker process that answered.
WORKER_HEADER = "X-Canaryd-Worker"
_WORKER_TITLE = b"nginx: worker process"
_MASTER_TITLE = b"nginx: master process"
_SHUTTING_DOWN = b"is shutting down"
_PROC_LIMIT = 4096
_REPORT_MARK = "canaryd-workers"


async def _proc(transport: Transport, path: str) -> bytes | None:
    """A /proc file's bytes, or None when it cannot be read (gone, not Linux, no permission)."""
    try:
        return await transport.read_file(path, 0, _PROC_LIMIT)
    except TransportError:
        return None


def _accepting(title: bytes | None) -> bool:
    return title is not None and title.startswith(_WORKER_TITLE) and _SHUTTING_DOWN not in title


async def accepting_workers(transport: Transport, master: int) -> frozenset[int] | None:
    """The master's children that are nginx workers not shutting down; None when its children cannot be
    listed (the master is gone, or the kernel has no /proc/PID/task/TID/children)."""
    children = await _proc(transport, f"/proc/{master}/task/{master}/children")
    if children is None:
        return None
    try:
        pids = [int(p) for p in children.split()]
    except ValueError:
        return None
    titles = await asyncio.gather(*(_proc(transport, f"/proc/{p}/cmdline") for p in pids))
    return frozenset(p for p, title in zip(pids, titles, strict=True) if _accepting(title))


async def _parent(transport: Transport, pid: int) -> int | None:
    """The parent pid from /proc/<pid>/stat; None when it cannot be read."""
    stat = await _proc(transport, f"/proc/{pid}/stat")
    try:
        return int(stat.rsplit(b")", 1)[1].split()[1]) if stat is not None else None
    except (IndexError, ValueError):
        return None


async def answering_worker(http: httpx.AsyncClient, url: str, timeout: float = 1.0) -> int | None:
    """The pid of the worker that answers the generation probe `url`; None when there is no such answer."""
    try:
        response = await http.get(url, headers={"Connection": "close"}, timeout=timeout)
        return int(response.headers[WORKER_HEADER])
    except (httpx.HTTPError, KeyError, ValueError):
        return None


def workers_script(*, worker: int | None = None, master: int | None = None) -> str:
    """Shell lines (builtins only: no process started) printing `canaryd-workers <master> <children>`: the
    master (`master`, or the parent of `worker`) and all its children now. Run by the install script just
    before the reload, where a snapshot taken from here could race the reload; prints nothing when /proc
    cannot be read."""
    if master is not None and master > 0:
        find = f"set -- x {master}"
    elif worker is not None and worker > 0:
        find = f"read -r st </proc/{worker}/stat && st=${{st##*)}} && set -- $st"
    else:
        raise ValueError("a worker's or the master's pid is needed")
    return (
        f"if {find}; then kids=; "
        '{ read -r kids; } </proc/"$2"/task/"$2"/children; '
        f'echo "{_REPORT_MARK} $2 $kids"; fi 2>/dev/null'
    )


class KnownMasters:
    """The master last found behind each generation probe's URL: the next change lists that master's
    children in its install script without asking the probe first, which would delay the reload (~10 ms on
    the loaded 2-core test machine). Checked after the reload; dropped when the check fails. One per
    runtime (proxy adapters are built per use and would forget it)."""

    def __init__(self) -> None:
        self._by_url: dict[str, int] = {}

    def get(self, url: str) -> int | None:
        """The master pid last proven to serve `url`, if any."""
        return self._by_url.get(url)

    def remember(self, url: str, master: int) -> None:
        self._by_url[url] = master

    def forget(self, url: str) -> None:
        self._by_url.pop(url, None)


async def reported_workers(
    transport: Transport,
    stdout: str,
    http: httpx.AsyncClient,
    url: str,
    worker: int | None,
    masters: KnownMasters,
) -> tuple[int, frozenset[int]] | None:
    """(master pid, its children before the reload) from what `workers_script` printed, checked as `snapshot`
    checks its chain: the worker that answered the probe (`worker`, before the script; else asked now) is
    among those children or, asked after the reload, is a child of that master; the master's title is
    nginx's master's. The master is remembered for `url` in `masters`, or forgotten when a check fails.
    The children may include processes that were not accepting (a cache manager, workers already shutting
    down): harmless, since `still_accepting` only asks whether any of them accepts now."""
    found = _reported(stdout)
    proven = found is not None and await _chain_holds(transport, http, url, worker, *found)
    if found is None or not proven:
        masters.forget(url)
        return None
    masters.remember(url, found[0])
    return found


def _reported(stdout: str) -> tuple[int, frozenset[int]] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(_REPORT_MARK + " "):
            try:
                master, *children = (int(f) for f in line.split()[1:])
            except ValueError:
                return None
            return master, frozenset(children)
    return None


async def _chain_holds(
    transport: Transport,
    http: httpx.AsyncClient,
    url: str,
    worker: int | None,
    master: int,
    children: frozenset[int],
) -> bool:
    if worker is None:  # the master came from KnownMasters: ask which worker serves the URL now
        worker = await answering_worker(http, url)
        if worker is None:
            return False
    if worker not in children and await _parent(transport, worker) != master:
        return False
    title = await _proc(transport, f"/proc/{master}/cmdline")
    return (title or b"").startswith(_MASTER_TITLE)


async def snapshot(
    http: httpx.AsyncClient, url: str, transport: Transport
) -> tuple[int, frozenset[int]] | None:
    """(master pid, workers accepting now), found from the worker that answers `url` (the generation probe);
    None when that chain cannot be followed and checked (see the module's docstring)."""
    worker = await answering_worker(http, url)
    if worker is None:
        return None
    master = await _parent(transport, worker)
    if master is None:
        return None
    title, workers = await asyncio.gather(
        _proc(transport, f"/proc/{master}/cmdline"), accepting_workers(transport, master)
    )
    if not (title or b"").startswith(_MASTER_TITLE) or workers is None or worker not in workers:
        return None
    return master, workers


async def still_accepting(transport: Transport, master: int, old: frozenset[int]) -> bool:
    """Whether any of the `old` workers may still accept a connection. Unreadable counts as yes."""
    now = await accepting_workers(transport, master)
    return now is None or bool(now & old)
