"""API and WebSocket: status reads at a fixed rate, and one event fanned out to many WebSocket subscribers.

    .venv/bin/python bench/api.py [--rate 300] [--seconds 20] [--subscribers 500] [--rounds 20] [--api-workers 1] [--compare main]
        [--api-host 127.0.0.1] [--api-port 18095]

Production mode on real parts: one `canaryd serve` process (nice 10) on PostgreSQL 127.0.0.1:5432 (a fresh
database, dropped afterwards) and Redis (CANARYD_BENCH_REDIS, default redis://127.0.0.1:6394/2, flushed).
`--deployments` monitoring deployments are written in bulk as in bench/scale.py, with one stored API token
(operate scope) that every request carries, as users' tokens are; no worker runs (nothing here needs one,
and no proxy or server is contacted).

1. Status reads: `GET /api/v1/deployments/{random id}` sent open-loop at `--rate` per second (a request
   is sent on schedule whether or not earlier ones came back, so a slow server cannot hide its queue) for
   `--seconds`; latency from the scheduled send to the full answer.
2. Fan-out: `--subscribers` WebSockets on one deployment's live stream; each round pauses or resumes the
   deployment through the API (`POST .../pause|resume`, which commits the event and publishes it on the
   bus, as every writer does); latency from sending the POST to each subscriber holding the event.

API CPU (utime + stime of the API processes, robust on a shared machine where latency is not): per status
read over phase 1, and per event over phase 2's rounds (the POST and its fan-out, not the connecting).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import PG_ADMIN, REDIS, ROOT, bulk_insert, cpu_seconds, pct, source_tree

BOOTSTRAP = "bench-" + os.urandom(16).hex()
#: Requests carry a token stored in the database (operate scope), as users' tokens are, not the bootstrap
#: token (which is checked against the setting, without a database lookup).
TOKEN = "cdt_bench" + os.urandom(16).hex()
MAX_SUBSCRIBERS = 2000


class RawClient:
    """A keep-alive HTTP/1.1 connection with nothing between the benchmark and the socket (httpx's pool
    slows down with thousands of requests waiting, which would be measured instead of the API)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def get(self, path: str) -> int:
        self.writer.write(
            f"GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next(int(x.split(":", 1)[1]) for x in lines if x.lower().startswith("content-length:"))
        await self.reader.readexactly(length)
        return int(lines[0].split()[1])


async def status_reads(host: str, port: int, rate: float, seconds: float, n: int) -> dict[str, float]:
    connections: asyncio.Queue[RawClient] = asyncio.Queue()
    for _ in range(64):
        connections.put_nowait(RawClient(*await asyncio.open_connection(host, port)))
    latencies: list[float] = []
    errors = 0

    async def one(at: float, dep: int) -> None:
        nonlocal errors
        conn = await connections.get()
        try:
            if await conn.get(f"/api/v1/deployments/{dep}") != 200:
                errors += 1
        finally:
            connections.put_nowait(conn)
        latencies.append(time.perf_counter() - at)

    total = int(rate * seconds)
    rng = random.Random(1)
    start = time.perf_counter() + 0.2
    tasks = []
    for i in range(total):
        at = start + i / rate
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        tasks.append(asyncio.create_task(one(at, rng.randrange(1, n + 1))))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    while not connections.empty():
        connections.get_nowait().writer.close()
    return {
        "requests": float(total),
        "errors": float(errors),
        "achieved_rps": total / elapsed,
        "p50_ms": pct(latencies, 0.5) * 1000,
        "p99_ms": pct(latencies, 0.99) * 1000,
        "max_ms": max(latencies) * 1000,
    }


async def fan_out(base: str, subscribers: int, rounds: int, api_cpu: Callable[[], float]) -> dict[str, float]:
    import httpx
    from websockets.asyncio.client import connect

    url = base.replace("http://", "ws://") + "/api/v1/deployments/1/ws"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    got: list[dict[int, float]] = [{} for _ in range(rounds)]  # round -> subscriber -> receipt time
    connected = asyncio.Semaphore(0)

    async def subscriber(i: int) -> None:
        async with connect(url, additional_headers=headers, max_size=None, open_timeout=60) as ws:
            await ws.recv()  # the status, at once
            connected.release()
            seen = 0  # events arrive in seq order, each once: the k-th pause/resume is round k's
            while True:
                message = json.loads(await ws.recv())
                if message.get("type") == "event" and message.get("kind") in ("paused", "resumed"):
                    got[seen][i] = time.perf_counter()
                    seen += 1

    tasks = []
    for first in range(0, subscribers, 50):
        # 50 at a time, each wave once the last one has its status: opening is not what is measured, and a
        # starved API (a loaded machine) would otherwise queue hundreds of openings for its database pool.
        wave = range(first, min(first + 50, subscribers))
        tasks += [asyncio.create_task(subscriber(i)) for i in wave]
        for _ in wave:
            await asyncio.wait_for(connected.acquire(), 120)
            failed = [t for t in tasks if t.done()]
            if failed:
                raise SystemExit(f"a subscriber failed: {failed[0].exception()!r}")
    sent: list[float] = []
    post_ms: list[float] = []
    cpu_before = api_cpu()
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
        for r in range(rounds):
            action = "pause" if r % 2 == 0 else "resume"
            await asyncio.sleep(0.5)
            sent.append(time.perf_counter())
            resp = await client.post(f"/api/v1/deployments/1/{action}", json={"reason": f"round {r}"})
            post_ms.append((time.perf_counter() - sent[-1]) * 1000)
            resp.raise_for_status()
            deadline = time.perf_counter() + 10
            while len(got[r]) < subscribers and time.perf_counter() < deadline:
                await asyncio.sleep(0.01)
    cpu_events = api_cpu() - cpu_before  # the rounds alone: each POST and its fan-out, not the connecting
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    lat = [(at - sent[r]) * 1000 for r in range(rounds) for at in got[r].values()]
    missing = subscribers * rounds - len(lat)
    return {
        "subscribers": float(subscribers),
        "events": float(rounds),
        "missing": float(missing),
        "post_p50_ms": pct(post_ms, 0.5),
        "p50_ms": pct(lat, 0.5),
        "p99_ms": pct(lat, 0.99),
        "max_ms": max(lat, default=float("nan")),
        "within_100ms_pct": 100 * sum(1 for x in lat if x <= 100) / (subscribers * rounds),
        "api_cpu_ms_per_event": cpu_events * 1000 / rounds,
    }


async def store_token(dsn: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO api_tokens (name, token_hash, scope, created_at) VALUES ('bench', $1, 'operate', now())",
            hashlib.sha256(TOKEN.encode()).hexdigest(),
        )
    finally:
        await conn.close()


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its live descendants (`canaryd serve` with CANARYD_API_WORKERS above 1
    runs the API in child processes)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(proc.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += cpu_seconds(current)
        todo += children.get(current, [])
    return total


def run_once(args: argparse.Namespace, src: Path, label: str) -> dict[str, Any]:
    name = f"canaryd_bench_api_{os.getpid()}_{label}"
    dsn = f"postgresql://postgres@127.0.0.1:5432/{name}"
    env = {
        **os.environ,
        "PYTHONPATH": str(src),
        "CANARYD_DATABASE_URL": dsn.replace("postgresql://", "postgresql+asyncpg://"),
        "CANARYD_REDIS_URL": REDIS,
        "CANARYD_BOOTSTRAP_TOKEN": BOOTSTRAP,
        "CANARYD_LOG_LEVEL": "WARNING",
        "CANARYD_API_WORKERS": str(args.api_workers),  # a tree without the setting ignores it
    }
    subprocess.run(["dropdb", *PG_ADMIN, "--if-exists", name], check=True, capture_output=True)
    subprocess.run(["createdb", *PG_ADMIN, name], check=True, capture_output=True)
    subprocess.run(
        [str(ROOT / ".venv/bin/python"), "-c", "import sys; from canaryd.db.migrate import upgrade; upgrade(sys.argv[1])",
         env["CANARYD_DATABASE_URL"]],
        check=True, env=env,
    )  # fmt: skip
    subprocess.run(["redis-cli", "-u", REDIS, "flushdb"], check=True, capture_output=True)
    far = datetime.now(UTC) + timedelta(days=1)  # no tick is due: no worker runs here
    asyncio.run(bulk_insert(dsn, args.deployments, 3, args.history, far, 14))
    asyncio.run(store_token(dsn))
    base = f"http://{args.api_host}:{args.api_port}"
    api = subprocess.Popen(
        [
            "nice",
            "-n",
            "10",
            str(ROOT / ".venv/bin/canaryd"),
            "serve",
            "--host",
            args.api_host,
            "--port",
            str(args.api_port),
        ],
        env=env,
    )
    try:
        import httpx

        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the API did not start within 180 s")
            time.sleep(0.3)
        cpu0 = tree_cpu_seconds(api.pid)
        reads = asyncio.run(
            status_reads(args.api_host, args.api_port, args.rate, args.seconds, args.deployments)
        )
        cpu1 = tree_cpu_seconds(api.pid)
        fan = asyncio.run(fan_out(base, args.subscribers, args.rounds, lambda: tree_cpu_seconds(api.pid)))
        reads["api_cpu_ms_per_read"] = (cpu1 - cpu0) * 1000 / reads["requests"]
        fan["api_cpu_s"] = tree_cpu_seconds(api.pid) - cpu1
    finally:
        api.send_signal(signal.SIGTERM)
        try:
            api.wait(timeout=15)
        except subprocess.TimeoutExpired:
            api.kill()
        subprocess.run(["dropdb", *PG_ADMIN, "--if-exists", "--force", name], capture_output=True)
    return {"label": label, "reads": reads, "fan": fan}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=300.0, help="status reads per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--subscribers", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=20, help="events fanned out")
    parser.add_argument("--deployments", type=int, default=1000)
    parser.add_argument("--history", type=int, default=0, help="old events per deployment")
    parser.add_argument("--compare", metavar="REV", help="run REV's src first (e.g. main), then this tree's")
    parser.add_argument("--api-host", default="127.0.0.1", help="loopback address the API listens on")
    parser.add_argument("--api-port", type=int, default=18095)
    parser.add_argument(
        "--api-workers", type=int, default=1, help="CANARYD_API_WORKERS for every run (a tree without it: 1)"
    )
    args = parser.parse_args()
    if not (1 <= args.rate <= 2000 and 1 <= args.seconds <= 120 and 1 <= args.subscribers <= MAX_SUBSCRIBERS):
        parser.error(f"--rate 1..2000, --seconds 1..120, --subscribers 1..{MAX_SUBSCRIBERS}")
    if not 1 <= args.api_workers <= 8:
        parser.error("--api-workers 1..8")
    if not (1 <= args.rounds <= 200 and 1 <= args.deployments <= 20_000 and 0 <= args.history <= 1000):
        parser.error("--rounds 1..200, --deployments 1..20000, --history 0..1000")
    runs = []
    if args.compare:
        runs.append(run_once(args, source_tree(args.compare), args.compare.replace("/", "_")))
    runs.append(run_once(args, ROOT / "src", "this"))
    print(f"API processes: CANARYD_API_WORKERS={args.api_workers} (trees without the setting: 1)")
    print(f"status reads: {args.rate:g}/s for {args.seconds:g} s over {args.deployments} deployments")
    print(f"{'':24}" + "".join(f"{r['label']:>14}" for r in runs))
    for key in runs[0]["reads"]:
        print(f"{key:24}" + "".join(f"{r['reads'][key]:>14.1f}" for r in runs))
    print(f"fan-out: {args.subscribers} WebSocket subscribers on one deployment, {args.rounds} events")
    for key in runs[0]["fan"]:
        print(f"{key:24}" + "".join(f"{r['fan'][key]:>14.1f}" for r in runs))


if __name__ == "__main__":
    main()
