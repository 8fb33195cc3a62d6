"""Reaction time: from a rollback decision to no more canary traffic at the proxy, as a client sees it, per
proxy and transport, next to the bare proxy operation measured in the same run (interleaved).

    .venv/bin/python bench/reaction.py                      # every proxy, local and ssh (~6 min)
    .venv/bin/python bench/reaction.py --proxies nginx --transports local --trials 40

What runs (all on loopback): a real nginx, HAProxy and Traefik v3 (the layouts of tests/fixtures/), two
sample-app instances (the canary at v2, the stable at v1) and, for the `ssh` transport, a real OpenSSH sshd
on 127.0.0.x that canaryd reaches through its pooled asyncssh transport (the proxies' files and commands
then go over SSH, as on a remote proxy server). A separate client process sends a request every
`--interval` ms, each on a fresh connection, and records when it sent it and which version answered.

Each trial starts from a 50 % split (set by canaryd, not timed), lets the client run for a moment, then at
t0 takes one of these paths, in alternating order:

* canaryd: the rollback decision (`domain.pool.desired_backends` in state rolling_back) and
  `proxies.switch.switch`, the very call the engine makes: apply, then wait until the proxy is proven to
  serve the new table.
* bare: the proxy's own operation with everything prepared beforehand: nginx: the rendered file is in
  place, then `nginx -s reload`; HAProxy: one admin-socket connection with `set weight <canary> 0`;
  Traefik (file provider): the rendered file written to a dot-name beforehand, then renamed into the watched
  directory.

Reaction = send time of the last request that still got the canary, minus t0 (0 when none after t0). Its
resolution is the request interval (and the split: at 50 % every other request goes to the canary).
"proven" is when canaryd's switch returned (the split proven live); "late" counts trials in which the client
still got a canary answer to a request sent *after* canaryd said the split was live (must be 0).
canaryd adds = p50(canaryd) - p50(bare). Traefik is measured at its default providersThrottleDuration
(2 s) and at the 100 ms that docs/proxies.md recommends, with every change made after a quiet period longer
than the throttle (a rollback comes long after the last stage change); back-to-back changes wait up to one
throttle more.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository root, for tests.fixtures


# --- the client process -------------------------------------------------------------------------------------


async def _one(host: str, port: int, out: list[tuple[float, float, str]]) -> None:
    sent = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
        writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        data = await asyncio.wait_for(reader.read(-1), 2)
        writer.close()
    except (OSError, TimeoutError):
        out.append((sent, time.monotonic(), "error"))
        return
    version = "?"
    for line in data.split(b"\r\n"):
        if line.lower().startswith(b"x-version:"):
            version = line.split(b":", 1)[1].strip().decode()
            break
    out.append((sent, time.monotonic(), version))


async def client_main(url: str, interval: float) -> None:
    """Reads `go` / `stop` lines; between them sends a request every `interval` s; on `stop` prints the
    records as one JSON line: [sent, answered, version] (time.monotonic, comparable across processes)."""
    host, port = url.split(":")
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).strip()
        if line != b"go":
            return
        print("going", flush=True)
        out: list[tuple[float, float, str]] = []
        tasks: set[asyncio.Task[None]] = set()
        stop = asyncio.ensure_future(reader.readline())
        next_at = time.monotonic()
        while not stop.done():
            if len(tasks) < 16:
                t = asyncio.create_task(_one(host, int(port), out))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
            next_at += interval
            await asyncio.wait([stop], timeout=max(0.0, next_at - time.monotonic()))
        if tasks:
            await asyncio.wait(tasks)
        print(json.dumps(sorted(out)), flush=True)


class Client:
    """The client process, started once per proxy."""

    def __init__(self, target: str, interval_ms: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--client", target, "--interval", str(interval_ms)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    async def go(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        assert (await asyncio.to_thread(self.proc.stdout.readline)).strip() == "going"

    async def stop(self) -> list[tuple[float, float, str]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        line = await asyncio.to_thread(self.proc.stdout.readline)
        return [tuple(r) for r in json.loads(line)]  # type: ignore[misc]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


# --- measuring -----------------------------------------------------------------------------------------------


@dataclass
class Figures:
    label: str
    reaction: list[float] = field(default_factory=list)
    proven: list[float] = field(default_factory=list)
    late: int = 0
    errors: int = 0


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, -(-len(s) * q // 1) - 1))]  # type: ignore[call-overload]


Step = Callable[[], Awaitable[Any]]


@dataclass
class PathSpec:
    """One path: `prepare` runs before the trial (not timed); `run` runs from t0 and returns when canaryd
    says proven (time.monotonic), or None for a bare operation (then `settle` waits until it surely acted)."""

    prepare: Step | None
    run: Callable[[], Awaitable[float | None]]


@dataclass
class Rig:
    """One proxy behind one transport."""

    name: str
    target: str  # host:port the client sends to
    reset: Step  # back to 50 % (canaryd, not timed)
    paths: dict[str, PathSpec]
    settle: Step
    quiet: float = 0.0  # seconds between the reset and t0 without any change (Traefik's throttle)


async def trial(rig: Rig, client: Client, label: str, result: Figures) -> None:
    path = rig.paths[label]
    await rig.reset()
    if path.prepare is not None:
        await path.prepare()
    await client.go()
    await asyncio.sleep(max(0.15, rig.quiet))
    t0 = time.monotonic()
    proven_at = await path.run()
    if proven_at is None:
        await rig.settle()
    await asyncio.sleep(0.25)
    records = await client.stop()
    before = [r for r in records if r[0] < t0]
    if not any(v == "v2" for _, _, v in before):
        raise RuntimeError(f"{rig.name} {label}: no canary answer before the decision: {records[-5:]}")
    after = [r for r in records if r[0] >= t0]
    result.errors += sum(v not in ("v1", "v2") for _, _, v in records)
    last = max((s for s, _, v in after if v == "v2"), default=t0)
    if os.environ.get("REACTION_DEBUG"):
        print(
            label,
            [round((s - t0) * 1000, 1) for s, _, v in after if v == "v2"],
            [round((e - t0) * 1000, 1) for s, e, v in after if v == "v2"],
        )
    result.reaction.append((last - t0) * 1000)
    if proven_at is not None:
        result.proven.append((proven_at - t0) * 1000)
        if any(v == "v2" and s > proven_at for s, _, v in after):
            result.late += 1


async def run_rig(rig: Rig, trials: int, interval_ms: float) -> list[Figures]:
    client = Client(rig.target, interval_ms)
    results = {label: Figures(label) for label in rig.paths}
    try:
        labels = list(rig.paths)
        for i in range(trials):
            for label in labels[i % len(labels) :] + labels[: i % len(labels)]:
                await trial(rig, client, label, results[label])
    finally:
        client.close()
    return list(results.values())


def report(name: str, trials: int, results: list[Figures]) -> None:
    print(f"\n{name}: {trials} trials per path, ms from the decision")
    print(f"  {'path':<56} {'react p50':>9} {'p99':>7} {'proven p50':>10} {'p99':>7} {'late':>4} {'err':>4}")
    for r in results:
        proven = f"{statistics.median(r.proven):10.1f} {pct(r.proven, 0.99):7.1f}" if r.proven else " " * 18
        late = str(r.late) if r.proven else ""
        print(
            f"  {r.label:<56} {statistics.median(r.reaction):9.1f} {pct(r.reaction, 0.99):7.1f} "
            f"{proven} {late:>4} {r.errors:>4}"
        )
    bare = results[0]
    for r in results[1:]:
        added = statistics.median(r.reaction) - statistics.median(bare.reaction)
        who = "this bare path" if r.label.startswith("bare") else "canaryd"
        print(f"  {who} adds, p50 of reaction: {added:+6.1f} ms over {bare.label.split(':')[0]} ({r.label})")
    sys.stdout.flush()


# --- canaryd's side ------------------------------------------------------------------------------------------


@dataclass
class Shared:
    """What every path on one proxy shares: the generation counter and the last table proven live."""

    backends: Callable[[Any, float], tuple[Any, ...]]
    generation: int = 0
    last: Any = None

    def table(self, state: Any, percent: float) -> Any:
        from canaryd.proxies.base import RouteTable

        self.generation += 1
        return RouteTable(1, "bench", self.backends(state, percent), self.generation)


def switcher(
    shared: Shared, make_proxy: Callable[[], Any], state_name: str, percent: float
) -> Callable[[], Awaitable[float]]:
    """canaryd's path: the decision (desired_backends) and switch(), with a fresh adapter as the engine
    makes one per tick. Returns when switch returned (proven live)."""

    async def run() -> float:
        from canaryd.domain.types import State
        from canaryd.proxies.switch import switch

        table = shared.table(State(state_name), percent)
        await switch(make_proxy(), table, shared.last)
        shared.last = table
        return time.monotonic()

    return run


def make_shared(canary: Any, stable: Any, max_weight: int) -> Shared:
    from canaryd.domain.pool import PoolServer, desired_backends

    servers = [PoolServer(1, stable.host, stable.port, "v1"), PoolServer(2, canary.host, canary.port, "v2")]

    def backends(state: Any, percent: float) -> tuple[Any, ...]:
        return desired_backends(state, servers, frozenset({2}), "v2", percent, None, max_weight)

    return Shared(backends)


async def sleep_step(seconds: float) -> None:
    await asyncio.sleep(seconds)


# --- the proxies -----------------------------------------------------------------------------------------------


@dataclass
class World:
    canary: Any
    stable: Any
    http: httpx.AsyncClient
    transports: dict[str, Any]  # name -> Transport
    host: str = "127.0.0.1"  # where the proxies listen
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)


def nginx_rigs(world: World) -> list[Rig]:
    from tests.fixtures.nginx import start_nginx

    from canaryd.proxies.nginx import NginxProxy, render_nginx

    nginx = start_nginx(world.host)
    world.stack.callback(nginx.cleanup)
    spec = nginx.spec(access_log=None)
    rigs = []
    for tname, transport in world.transports.items():
        shared = make_shared(world.canary, world.stable, spec.weight_limit)

        def proxy(observe: bool, t: Any = transport, one_command: bool | None = None) -> Any:
            choice = {} if one_command is None else {"one_command": one_command}
            return NginxProxy(t, spec, world.host, world.http, observe_workers=observe, **choice)

        # A tree from before NginxProxy.one_command (`PYTHONPATH=<main>/src`) runs without that row.
        has_other = "one_command" in inspect.signature(NginxProxy).parameters
        other_way = has_other and not NginxProxy(transport, spec, world.host, world.http).one_command
        other = (
            "canaryd now, in one command (file, test, reload)"
            if other_way
            else "canaryd now, step by step (SFTP file, 2 commands)"
        )

        async def prepare(shared: Shared = shared) -> None:
            table = shared.table("rolling_back", 0.0)
            await asyncio.to_thread(Path(nginx.config_path).write_text, render_nginx(table, spec))
            shared.last = table

        async def bare() -> None:
            p = await asyncio.create_subprocess_exec(
                nginx.binary, "-c", nginx.main_conf, "-s", "reload", stderr=asyncio.subprocess.DEVNULL
            )
            await p.wait()

        async def bare_run() -> None:
            await bare()

        async def tested_run() -> None:
            p = await asyncio.create_subprocess_exec(
                nginx.binary, "-c", nginx.main_conf, "-t", stderr=asyncio.subprocess.DEVNULL
            )
            if await p.wait() != 0:
                raise RuntimeError("nginx -t failed")
            await bare()

        rig = Rig(
            f"nginx {nginx_version()}, {tname} transport",
            nginx.listen,
            switcher(shared, lambda proxy=proxy: proxy(True), "monitoring", 50.0),
            {
                "bare: nginx -s reload (file in place)": PathSpec(prepare, bare_run),  # type: ignore[arg-type]
                "bare: nginx -t, then nginx -s reload": PathSpec(prepare, tested_run),  # type: ignore[arg-type]
                "canaryd before: switch, fixed 150 ms settle": PathSpec(
                    None, switcher(shared, lambda proxy=proxy: proxy(False), "rolling_back", 0.0)
                ),
                "canaryd now: switch, old workers observed": PathSpec(
                    None, switcher(shared, lambda proxy=proxy: proxy(True), "rolling_back", 0.0)
                ),
            },
            lambda: sleep_step(0.3),
        )
        if has_other:  # the other way of installing than the transport's default (NginxProxy.one_command)
            rig.paths[other] = PathSpec(
                None,
                switcher(
                    shared, lambda proxy=proxy, o=other_way: proxy(True, one_command=o), "rolling_back", 0.0
                ),
            )
        rigs.append(rig)
    return rigs


def nginx_version() -> str:
    out = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr
    return out.strip().rsplit("/", 1)[-1]


def haproxy_rigs(world: World) -> list[Rig]:
    from tests.fixtures.haproxy import start_haproxy

    from canaryd.proxies.haproxy import HaproxyProxy, backend_name

    haproxy = start_haproxy()
    world.stack.callback(haproxy.cleanup)
    spec = haproxy.spec(access_log=None)
    rigs = []
    version = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.split()[2]
    for tname, transport in world.transports.items():
        shared = make_shared(world.canary, world.stable, spec.weight_limit)

        def proxy(t: Any = transport) -> Any:
            return HaproxyProxy(t, spec, "127.0.0.1", world.http)

        async def prepare(shared: Shared = shared) -> None:
            shared.last = shared.table("rolling_back", 0.0)

        async def bare_run() -> None:
            reader, writer = await asyncio.open_unix_connection(haproxy.socket)
            writer.write(f"set weight {backend_name(1)}/s2 0\n".encode())
            answer = await reader.read()
            writer.close()
            if answer.strip():
                raise RuntimeError(f"HAProxy refused: {answer!r}")

        rigs.append(
            Rig(
                f"HAProxy {version}, {tname} transport",
                haproxy.listen,
                switcher(shared, proxy, "monitoring", 50.0),
                {
                    "bare: one admin-socket call, set weight canary 0": PathSpec(prepare, bare_run),  # type: ignore[arg-type]
                    "canaryd: switch (runtime API, file, test, read-back)": PathSpec(
                        None, switcher(shared, proxy, "rolling_back", 0.0)
                    ),
                },
                lambda: sleep_step(0.05),
            )
        )
    return rigs


def traefik_rigs(world: World, throttle: str) -> list[Rig]:
    from tests.fixtures import traefik as fixture

    from canaryd.proxies.traefik import TraefikProxy, dump_config, render_traefik

    fixture.THROTTLE = throttle
    traefik = fixture.start_traefik()
    world.stack.callback(traefik.cleanup)
    spec = traefik.spec()
    seconds = float(throttle.removesuffix("ms")) / 1000 if throttle.endswith("ms") else float(throttle[:-1])
    rigs = []
    for tname, transport in world.transports.items():
        shared = make_shared(world.canary, world.stable, spec.weight_limit)
        # Prepared where canaryd keeps its temp files (.canaryd/): no event in the watched directory before t0.
        os.makedirs(os.path.join(traefik.dynamic_dir, ".canaryd"), exist_ok=True)
        temp = os.path.join(traefik.dynamic_dir, ".canaryd", ".app.yml.bench")
        pending: list[Any] = []

        def proxy(poll: float | None, t: Any = transport) -> Any:
            if poll is None:
                return TraefikProxy(t, spec, "127.0.0.1", world.http)
            return TraefikProxy(t, spec, "127.0.0.1", world.http, poll_interval=poll)

        async def prepare(shared: Shared = shared, pending: list[Any] = pending, temp: str = temp) -> None:
            table = shared.table("rolling_back", 0.0)
            await asyncio.to_thread(Path(temp).write_bytes, dump_config(render_traefik(table, spec)))
            shared.last = table
            pending[:] = [table]

        async def bare_run(temp: str = temp) -> None:
            os.rename(temp, traefik.config_path)  # timed: the bare operation itself

        async def settle(pending: list[Any] = pending, proxy: Any = proxy) -> None:
            deadline = time.monotonic() + 10
            checker = proxy(None)
            while not await checker.check(pending[0]):
                if time.monotonic() > deadline:
                    raise RuntimeError("Traefik never loaded the bare change")
                await asyncio.sleep(0.02)

        rigs.append(
            Rig(
                f"Traefik 3 (file provider, providersThrottleDuration {throttle}), {tname} transport",
                traefik.url.removeprefix("http://").rstrip("/"),
                switcher(shared, lambda proxy=proxy: proxy(None), "monitoring", 50.0),
                {
                    "bare: rename a prepared file into the watched dir": PathSpec(prepare, bare_run),  # type: ignore[arg-type]
                    "canaryd before: switch, API polled every 250 ms": PathSpec(
                        None, switcher(shared, lambda proxy=proxy: proxy(0.25), "rolling_back", 0.0)
                    ),
                    "canaryd now: switch, API polled 10 ms growing to 250": PathSpec(
                        None, switcher(shared, lambda proxy=proxy: proxy(None), "rolling_back", 0.0)
                    ),
                },
                settle,
                quiet=seconds + 0.3,
            )
        )
    return rigs


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--interval", type=float, default=2.0, help="ms between client requests (default 2)")
    parser.add_argument(
        "--trials", type=int, default=20, help="trials per path, nginx and HAProxy (default 20)"
    )
    parser.add_argument("--traefik-trials", type=int, default=8, help="trials per path, Traefik (default 8)")
    parser.add_argument("--proxies", default="nginx,haproxy,traefik")
    parser.add_argument("--transports", default="local,ssh")
    parser.add_argument("--throttles", default="2s,100ms", help="Traefik providersThrottleDuration values")
    parser.add_argument(
        "--net",
        type=int,
        help="use 127.0.NET.0/24 for the apps, sshd and nginx (default: a random NET in 10..250; "
        "HAProxy and Traefik listen on 127.0.0.1)",
    )
    args = parser.parse_args()
    if args.client:
        await client_main(args.client, args.interval / 1000)
        return
    if not 1 <= args.trials <= 500 or not 1 <= args.traefik_trials <= 100:
        parser.error("--trials must be 1..500 and --traefik-trials 1..100")

    from tests.fixtures.apps import start_app

    from canaryd.transports.local import LocalTransport

    if args.net is not None and not 1 <= args.net <= 254:
        parser.error("--net must be 1..254")
    net = args.net if args.net is not None else random.randint(10, 250)
    with contextlib.ExitStack() as stack:
        canary = start_app(f"127.0.{net}.2", "v2")
        stack.callback(canary.stop)
        stable = start_app(f"127.0.{net}.3", "v1")
        stack.callback(stable.stop)
        transports: dict[str, Any] = {}
        pool = None
        names = args.transports.split(",")
        if "local" in names:
            transports["local"] = LocalTransport()
        if "ssh" in names:
            from tests.fixtures.sshd import running_sshd

            from canaryd.transports.ssh import SshPool

            sshd = stack.enter_context(running_sshd(host=f"127.0.{net}.5"))
            pool = SshPool(sshd.known_hosts, [sshd.client_key], connect_timeout=5)
            transports["ssh"] = pool.transport(sshd.host, sshd.port, sshd.user)
        print(
            f"cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} at start; client: one request per "
            f"{args.interval:g} ms on a fresh connection; split 50 % before each rollback; transports: "
            f"{', '.join(transports)}"
            + (" (sshd on loopback, one pooled asyncssh connection)" if pool else "")
        )
        try:
            async with httpx.AsyncClient() as http:
                world = World(canary, stable, http, transports, f"127.0.{net}.4", stack)
                proxies = args.proxies.split(",")
                todo: list[tuple[Callable[[], list[Rig]], int]] = []
                if "nginx" in proxies:
                    todo.append((lambda: nginx_rigs(world), args.trials))
                if "haproxy" in proxies:
                    todo.append((lambda: haproxy_rigs(world), args.trials))
                if "traefik" in proxies:
                    for throttle in args.throttles.split(","):
                        todo.append((lambda th=throttle: traefik_rigs(world, th), args.traefik_trials))
                for make, trials in todo:
                    for rig in make():
                        await rig.reset()  # registration (a reload) and the first 50 % split
                        report(rig.name, trials, await run_rig(rig, trials, args.interval))
        finally:
            if pool is not None:
                print(f"\nSSH connections opened: {pool.connections_opened}")
                await pool.close()
        print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    asyncio.run(main())
