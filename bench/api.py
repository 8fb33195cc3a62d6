"""API and WebSocket: status reads at a fixed rate, and one event fanned out to many WebSocket subscribers.

    .venv/bin/python bench/api.py [--rate 300] [--seconds 20] [--subscribers 500] [--rounds 20] [--api-workers 1] [--compare main]
        [--api-host 127.0.0.1] [--api-port 18095] [--client raw|websockets] [--client-procs 2]

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
   The client is cheap, so that what is measured is the server: the subscribers are raw sockets in
   `--client-procs` processes (uvloop where installed) that do the handshake by hand, split frames by their
   headers and read only the first bytes of each text frame (is it an event, its seq, a pause or resume?),
   never decoding JSON; this process only sends the POSTs, over a blocking connection. Each subscriber must
   get every event in seq order: `missing` and `out_of_order` count what did not. `client_cpu_ms_per_event`
   is the client's own CPU (all its processes) per event. `--client websockets` is the first client (the
   websockets library and json.loads of every message, POSTs through httpx, all in one process), whose
   own CPU was most of what it measured.

API CPU (utime + stime of the API processes, robust on a shared machine where latency is not): per status
read over phase 1, and per event over phase 2's rounds (the POST and its fan-out, not the connecting).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
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


def _ws_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


class _Subscriber(asyncio.Protocol):
    """One WebSocket subscriber with as little client work as the measure allows: the handshake by hand,
    frames split by their headers, and of each text frame only its first bytes read (is it an event, its
    seq, is it a pause or resume); statuses are skipped by length, nothing is decoded as JSON. Pings are
    answered (uvicorn closes a connection that does not answer its pings)."""

    def __init__(self, shared: _Subscribers, index: int, request: bytes) -> None:
        self.shared, self.index, self.request = shared, index, request
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.open = False
        self.last_seq = -1  # seq of the last event received (-1: none yet)
        self.seen = 0  # pause/resume events received: the k-th is round k's
        self.greeted = asyncio.get_running_loop().create_future()  # the status, received at once
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.greeted.done():
            self.greeted.set_exception(ConnectionError(f"subscriber {self.index} lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        buf = self.buf
        buf += data
        pos = 0
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                raise SystemExit(f"handshake refused: {bytes(buf[:200])!r}")
            self.open, pos = True, end + 4
        size = len(buf)
        while size - pos >= 2:
            opcode, n = buf[pos] & 0x0F, buf[pos + 1] & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n, head = int.from_bytes(buf[pos + 2 : pos + 4]), 4
            elif n == 127:
                if size - pos < 10:
                    break
                n, head = int.from_bytes(buf[pos + 2 : pos + 10]), 10
            if size - pos < head + n:
                break
            start = pos + head
            pos = start + n
            if opcode == 0x1:
                self._text(buf, start, pos, now)
            elif opcode == 0x9 and self.transport is not None:  # ping: a masked pong (mask 0) echoing it
                self.transport.write(bytes((0x8A, 0x80 | n)) + bytes(4) + bytes(buf[start:pos]))
            elif opcode == 0x8:
                self.closed = True
        del buf[:pos]

    def _text(self, buf: bytearray, start: int, end: int, now: float) -> None:
        if not buf.startswith(b'{"type":"event"', start):
            if not self.greeted.done():
                self.greeted.set_result(None)
            return
        at = buf.find(b'"seq":', start, min(end, start + 200)) + 6
        comma = buf.find(b",", at, end)
        seq = int(buf[at:comma])
        if self.last_seq >= 0 and seq != self.last_seq + 1:
            self.shared.disorder += 1
        self.last_seq = seq
        kind = buf.find(b'"kind":"', comma, min(end, start + 300)) + 8
        if buf.startswith(b"paused", kind) or buf.startswith(b"resumed", kind):
            self.shared.received(self.index, self.seen, now)
            self.seen += 1


class _Subscribers:
    """A client process's subscribers and what they received: per round, each subscriber's receipt time."""

    def __init__(self, rounds: int, count: int, report: Callable[[int], None]) -> None:
        self.got: list[dict[int, float]] = [{} for _ in range(rounds)]
        self.count, self.report = count, report
        self.disorder = 0

    def received(self, index: int, round_: int, at: float) -> None:
        if round_ >= len(self.got):
            self.disorder += 1  # more pause/resume events than rounds
            return
        got = self.got[round_]
        got[index] = at
        if len(got) == self.count:
            self.report(round_)


def _client_process(pipe: Any, host: str, port: int, token: str, first: int, count: int, rounds: int) -> None:
    """A process of the fan-out client: `count` subscribers; tells the bench each round all of them hold."""
    try:
        import uvloop  # the server's loop too: each read costs the client less
    except ImportError:
        asyncio.run(_client_main(pipe, host, port, token, first, count, rounds))
    else:
        uvloop.run(_client_main(pipe, host, port, token, first, count, rounds))


async def _client_main(
    pipe: Any, host: str, port: int, token: str, first: int, count: int, rounds: int
) -> None:
    loop = asyncio.get_running_loop()
    shared = _Subscribers(rounds, count, lambda r: pipe.send(("round", r)))
    commands: asyncio.Queue[Any] = asyncio.Queue()
    loop.add_reader(pipe.fileno(), lambda: commands.put_nowait(pipe.recv()))
    assert await commands.get() == "connect"
    subs: list[_Subscriber] = []
    for wave in range(0, count, 50):
        # 50 at a time, each wave once the last one has its status: opening is not what is measured, and a
        # starved API (a loaded machine) would otherwise queue hundreds of openings for its database pool.
        new = []
        for i in range(wave, min(wave + 50, count)):
            request = (
                "GET /api/v1/deployments/1/ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {_ws_key()}\r\nSec-WebSocket-Version: 13\r\n"
                f"Authorization: Bearer {token}\r\n\r\n"
            ).encode()
            _, sub = await loop.create_connection(
                lambda i=i, r=request: _Subscriber(shared, i, r), host, port
            )
            new.append(sub)
        await asyncio.wait_for(asyncio.gather(*(s.greeted for s in new)), 120)
        subs += new
    pipe.send(("connected", first))
    assert await commands.get() == "go"
    cpu0 = time.process_time()
    assert await commands.get() == "stop"
    cpu = time.process_time() - cpu0
    closed = sum(s.closed for s in subs)
    for s in subs:
        if s.transport is not None:
            s.transport.close()
    pipe.send(("done", shared.got, shared.disorder, closed, cpu))


def fan_out_raw(
    host: str, port: int, subscribers: int, rounds: int, procs: int, api_cpu: Callable[[], float]
) -> dict[str, float]:
    """The fan-out with the cheap client: `procs` processes of raw-socket subscribers; this process only
    sends the POSTs (a blocking HTTP connection, so the POST's time is not the subscribers' work)."""
    import http.client
    import multiprocessing
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("spawn")
    procs = min(procs, subscribers)
    shares = [subscribers // procs + (1 if k < subscribers % procs else 0) for k in range(procs)]
    pipes, workers, first = [], [], 0
    for share in shares:
        ours, theirs = ctx.Pipe()
        worker = ctx.Process(
            target=_client_process, args=(theirs, host, port, TOKEN, first, share, rounds), daemon=True
        )
        worker.start()
        pipes.append(ours)
        workers.append(worker)
        first += share
    try:
        for pipe in pipes:  # one process's subscribers after the other's
            pipe.send("connect")
            if not pipe.poll(600):
                raise SystemExit("a client process did not connect its subscribers within 600 s")
            reply = pipe.recv()
            if reply[0] != "connected":
                raise SystemExit(f"client process: {reply!r}")
        http = http.client.HTTPConnection(host, port, timeout=30)
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        sent: list[float] = []
        post_ms: list[float] = []
        cpu_before, client0 = api_cpu(), time.process_time()
        for pipe in pipes:
            pipe.send("go")
        for r in range(rounds):
            action = "pause" if r % 2 == 0 else "resume"
            time.sleep(0.5)
            body = json.dumps({"reason": f"round {r}"})
            sent.append(time.perf_counter())
            http.request("POST", f"/api/v1/deployments/1/{action}", body=body, headers=headers)
            resp = http.getresponse()
            resp.read()
            post_ms.append((time.perf_counter() - sent[-1]) * 1000)
            if resp.status >= 300:
                raise SystemExit(f"POST {action}: {resp.status}")
            waiting, deadline = set(pipes), time.perf_counter() + 10
            while waiting and time.perf_counter() < deadline:
                for pipe in wait(list(waiting), deadline - time.perf_counter()):
                    kind, done_round = pipe.recv()
                    if kind == "round" and done_round == r:
                        waiting.discard(pipe)
        cpu_events = api_cpu() - cpu_before  # the rounds alone: each POST and its fan-out, not the connecting
        client_cpu = time.process_time() - client0
        for pipe in pipes:
            pipe.send("stop")
        got: list[dict[int, float]] = [{} for _ in range(rounds)]
        disorder = closed = 0
        for pipe in pipes:
            while (reply := pipe.recv())[0] != "done":
                pass  # late round reports
            _, theirs_got, their_disorder, their_closed, their_cpu = reply
            for r in range(rounds):
                got[r].update({(id(pipe), i): at for i, at in theirs_got[r].items()})
            disorder, closed, client_cpu = (
                disorder + their_disorder,
                closed + their_closed,
                client_cpu + their_cpu,
            )
        http.close()
    finally:
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
    lat = [(at - sent[r]) * 1000 for r in range(rounds) for at in got[r].values()]
    result = _fan_figures(subscribers, rounds, lat, post_ms, cpu_events)
    result["out_of_order"] = float(disorder)
    result["closed_early"] = float(closed)
    result["client_cpu_ms_per_event"] = client_cpu * 1000 / rounds
    return result


def _fan_figures(
    subscribers: int, rounds: int, lat: list[float], post_ms: list[float], cpu_events: float
) -> dict[str, float]:
    return {
        "subscribers": float(subscribers),
        "events": float(rounds),
        "missing": float(subscribers * rounds - len(lat)),
        "post_p50_ms": pct(post_ms, 0.5),
        "p50_ms": pct(lat, 0.5),
        "p99_ms": pct(lat, 0.99),
        "max_ms": max(lat, default=float("nan")),
        "within_100ms_pct": 100 * sum(1 for x in lat if x <= 100) / (subscribers * rounds),
        "api_cpu_ms_per_event": cpu_events * 1000 / rounds,
    }


async def fan_out(base: str, subscribers: int, rounds: int, api_cpu: Callable[[], float]) -> dict[str, float]:
    """The fan-out with the first client (`--client websockets`): the `websockets` library and json.loads of
    every message, POSTs through httpx, all in this one process."""
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
        wave = range(first, min(first + 50, subscribers))
        tasks += [asyncio.create_task(subscriber(i)) for i in wave]
        for _ in wave:
            await asyncio.wait_for(connected.acquire(), 120)
            failed = [t for t in tasks if t.done()]
            if failed:
                raise SystemExit(f"a subscriber failed: {failed[0].exception()!r}")
    sent: list[float] = []
    post_ms: list[float] = []
    cpu_before, client0 = api_cpu(), time.process_time()
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
    cpu_events = api_cpu() - cpu_before
    client_cpu = time.process_time() - client0
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    lat = [(at - sent[r]) * 1000 for r in range(rounds) for at in got[r].values()]
    result = _fan_figures(subscribers, rounds, lat, post_ms, cpu_events)
    result["client_cpu_ms_per_event"] = client_cpu * 1000 / rounds
    return result


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

        def api_cpu() -> float:
            return tree_cpu_seconds(api.pid)

        if args.client == "raw":
            fan = fan_out_raw(
                args.api_host, args.api_port, args.subscribers, args.rounds, args.client_procs, api_cpu
            )
        else:
            fan = asyncio.run(fan_out(base, args.subscribers, args.rounds, api_cpu))
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
        "--client",
        choices=("raw", "websockets"),
        default="raw",
        help="fan-out client: raw sockets in --client-procs processes (default), or the websockets library "
        "and json.loads in this process (the first client, whose own CPU was most of what it measured)",
    )
    parser.add_argument("--client-procs", type=int, default=2, help="processes of raw subscribers (1..8)")
    parser.add_argument(
        "--api-workers", type=int, default=1, help="CANARYD_API_WORKERS for every run (a tree without it: 1)"
    )
    args = parser.parse_args()
    if not (1 <= args.rate <= 2000 and 1 <= args.seconds <= 120 and 1 <= args.subscribers <= MAX_SUBSCRIBERS):
        parser.error(f"--rate 1..2000, --seconds 1..120, --subscribers 1..{MAX_SUBSCRIBERS}")
    if not 1 <= args.client_procs <= 8:
        parser.error("--client-procs 1..8")
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
    client = (
        f"raw sockets in {args.client_procs} processes" if args.client == "raw" else "websockets, 1 process"
    )
    print(
        f"fan-out: {args.subscribers} WebSocket subscribers on one deployment, {args.rounds} events ({client})"
    )
    for key in runs[0]["fan"]:
        print(f"{key:24}" + "".join(f"{r['fan'][key]:>14.1f}" for r in runs))


if __name__ == "__main__":
    main()
