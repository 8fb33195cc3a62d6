"""How long canaryd takes from a split decision to the new weights being live, next to the bare proxy
operation measured in the same run, per proxy.

    .venv/bin/python bench/proxy_switch.py              # 20 rounds per path (the figures in docs/benchmarks.md)
    .venv/bin/python bench/proxy_switch.py --rounds 50

Starts a real nginx and a real HAProxy (the same layouts as the tests: tests/fixtures/nginx.py and
tests/fixtures/haproxy.py) and five sample-app instances (1 canary at v2, 4 stable at v1) on 127.0.x.y.
Each round moves the split to the next of 10, 25, 50, 75 %.

* canaryd: `domain.pool.desired_backends` (the decision's weights) then `proxies.switch.switch`, the
  very call the engine makes (apply + verify; it returns once the proxy is proven to serve the new table).
* bare nginx: the rendered file is written beforehand (not timed); then `nginx -s reload` and a poll of the
  generation probe every 10 ms, on fresh connections, until the new generation answers once.
* bare HAProxy: one connection to the admin socket carrying the `set weight` commands of every server;
  timed until HAProxy's answer (the weights are live when it answers).

Prints median / p90 / max in milliseconds and the ratio of the medians. Runs nginx alone, and says so, when
HAProxy or canaryd's HAProxy adapter is not available.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests.fixtures

from tests.fixtures.apps import AppInstance, start_app
from tests.fixtures.nginx import NginxInstance, start_nginx

from canaryd.db.models import Application
from canaryd.domain.pool import PoolServer, desired_backends
from canaryd.domain.types import Backend, State
from canaryd.proxies.base import Proxy, RouteTable
from canaryd.proxies.nginx import GENERATION_PATH, NginxProxy, render_nginx
from canaryd.proxies.switch import switch
from canaryd.transports.local import LocalTransport

STAGES = (10.0, 25.0, 50.0, 75.0)
POLL = 0.01


@dataclass
class Figures:
    label: str
    ms: list[float]

    def row(self) -> str:
        xs = sorted(self.ms)
        p90 = xs[min(len(xs) - 1, round(0.9 * (len(xs) - 1)))]
        return f"  {self.label:<70} {statistics.median(xs):8.1f} {p90:8.1f} {max(xs):8.1f}"


def stage_cycle() -> Iterator[float]:
    while True:
        yield from STAGES


class Decider:
    """The pure decision: the pool's backends for the next stage."""

    def __init__(self, apps: list[AppInstance], max_weight: int) -> None:
        self.pool = [PoolServer(i + 1, a.host, a.port, a.version) for i, a in enumerate(apps)]
        self.canary_ids = frozenset(s.server_id for s in self.pool if s.version == "v2")
        self.max_weight = max_weight
        self.stages = stage_cycle()

    def next(self) -> tuple[Backend, ...]:
        return desired_backends(
            State.MONITORING, self.pool, self.canary_ids, "v2", next(self.stages), None, self.max_weight
        )


async def canaryd_path(
    proxy: Proxy, decider: Decider, rounds: int, generation: int, live: list[float] | None = None
) -> list[float]:
    """Decision → switch returned (new weights proven live), per round. With `live`, also collects
    decision → weights set (the HAProxy adapter's `live_ms`, before it installs and tests the file)."""
    app = Application(id=1, name="bench")
    out = []
    for _ in range(rounds):
        generation += 1
        t0 = time.perf_counter()
        backends = decider.next()
        decided = time.perf_counter()
        await switch(proxy, RouteTable(app.id, app.name, tuple(backends), generation), None)
        out.append((time.perf_counter() - t0) * 1000)
        live_ms = getattr(proxy, "live_ms", None)
        if live is not None and live_ms is not None:
            live.append((decided - t0) * 1000 + live_ms)
    return out


async def time_rounds(rounds: int, one: Callable[[int], Awaitable[float]]) -> list[float]:
    return [await one(i) for i in range(rounds)]


async def bench_nginx(apps: list[AppInstance], rounds: int) -> list[Figures]:
    nginx: NginxInstance = start_nginx()
    try:
        async with httpx.AsyncClient() as http:
            proxy = NginxProxy(LocalTransport(), nginx.spec(), "127.0.0.1", http)
            decider = Decider(apps, proxy.spec.weight_limit)
            ours = await canaryd_path(proxy, decider, rounds, generation=0)

            url = f"http://{nginx.listen}{GENERATION_PATH}"
            reload_args = [nginx.binary, "-c", nginx.main_conf, "-s", "reload"]

            async def bare(i: int) -> float:
                generation = 1000 + i
                table = RouteTable(1, "bench", decider.next(), generation)
                await asyncio.to_thread(Path(nginx.config_path).write_text, render_nginx(table, proxy.spec))
                t0 = time.perf_counter()
                process = await asyncio.create_subprocess_exec(
                    *reload_args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
                )
                _, err = await process.communicate()
                if process.returncode != 0:
                    raise RuntimeError(f"nginx -s reload failed: {err.decode()[-300:]}")
                while True:
                    try:
                        r = await http.get(url, headers={"Connection": "close"}, timeout=2)
                        if r.text == f"{generation}\n":
                            return (time.perf_counter() - t0) * 1000
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(POLL)

            theirs = await time_rounds(rounds, bare)

            async def test_command(_: int) -> float:
                t0 = time.perf_counter()
                result = await LocalTransport().run(nginx.test_command, 30)
                if not result.ok:
                    raise RuntimeError(f"nginx -t failed: {result.tail()}")
                return (time.perf_counter() - t0) * 1000

            tests = await time_rounds(rounds, test_command)
    finally:
        nginx.cleanup()
    return [
        Figures("nginx   canaryd: decision -> switch (apply + verify)", ours),
        Figures("nginx   bare: nginx -s reload -> new generation answers", theirs),
        Figures("nginx   nginx -t alone (canaryd runs it before each reload)", tests),
    ]


async def bench_haproxy(apps: list[AppInstance], rounds: int) -> list[Figures] | str:
    """HAProxy figures, or why they could not be taken."""
    try:
        from tests.fixtures.haproxy import start_haproxy

        from canaryd.proxies.haproxy import HaproxyProxy, backend_name, declared_servers, expected_weights
    except ImportError as exc:
        return f"HAProxy skipped: canaryd's HAProxy adapter is not available ({exc}); nginx only"
    try:
        haproxy = start_haproxy()
    except BaseException as exc:  # pytest.fail() outside pytest: haproxy missing or not starting
        return f"HAProxy skipped: {exc}; nginx only (apt-get install -y haproxy)"
    try:
        async with httpx.AsyncClient() as http:
            proxy = HaproxyProxy(LocalTransport(), haproxy.spec(), "127.0.0.1", http)
            decider = Decider(apps, proxy.spec.weight_limit)
            app = Application(id=1, name="bench")
            # The first table declares every server (a reload); every later change is a runtime weight change.
            await switch(proxy, RouteTable(app.id, app.name, tuple(decider.next()), 1), None)
            live: list[float] = []
            ours = await canaryd_path(proxy, decider, rounds, generation=1, live=live)
            if proxy.last_path != "runtime" or len(live) != rounds:
                return f"HAProxy skipped: the adapter took the {proxy.last_path} path for a weight change"
            declared = set(declared_servers(await asyncio.to_thread(Path(haproxy.config_path).read_text)))
            backend = backend_name(1)

            async def bare(i: int) -> float:
                table = RouteTable(1, "bench", decider.next(), 1000 + i)
                weights = expected_weights(table, declared)
                payload = ";".join(f"set weight {backend}/{n} {w}" for n, w in sorted(weights.items()))
                t0 = time.perf_counter()
                reader, writer = await asyncio.open_unix_connection(haproxy.socket)
                writer.write(payload.encode() + b"\n")
                answer = await reader.read()  # HAProxy closes the connection after the last answer
                writer.close()
                await writer.wait_closed()
                elapsed = (time.perf_counter() - t0) * 1000
                if answer.strip():
                    raise RuntimeError(f"HAProxy refused: {answer.decode()[:200]}")
                return elapsed

            theirs = await time_rounds(rounds, bare)
    finally:
        haproxy.cleanup()
    return [
        Figures("HAProxy canaryd: decision -> switch (socket, file, test, read-back)", ours),
        Figures("HAProxy bare: one admin-socket call with the set weight commands", theirs),
        Figures("HAProxy canaryd: decision -> weights set (live_ms, within the above)", live),
    ]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="rounds per path and proxy (default 20)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    net = random.randint(10, 250)
    apps = [start_app(f"127.0.{net}.2", "v2")] + [start_app(f"127.0.{net}.{i}", "v1") for i in range(3, 7)]
    try:
        results = [await bench_nginx(apps, args.rounds)]
        haproxy = await bench_haproxy(apps, args.rounds)
    finally:
        for a in apps:
            a.stop()
    if isinstance(haproxy, str):
        print(haproxy)
    else:
        results.append(haproxy)

    print(f"\n{args.rounds} rounds per path, split cycling through {', '.join(f'{s:g}' for s in STAGES)} %")
    print(f"  {'path':<70} {'median':>8} {'p90':>8} {'max':>8}   (ms)")
    for ours, theirs, *more in results:
        print(ours.row())
        print(theirs.row())
        ratio = statistics.median(ours.ms) / statistics.median(theirs.ms)
        print(f"  {'ratio of medians (canaryd / bare)':<70} {ratio:8.1f}")
        for extra in more:
            print(extra.row())
            if extra.label.startswith("HAProxy"):
                ratio = statistics.median(extra.ms) / statistics.median(theirs.ms)
                print(f"  {'ratio of medians (weights set / bare)':<70} {ratio:8.1f}")
        print()


if __name__ == "__main__":
    asyncio.run(main())
