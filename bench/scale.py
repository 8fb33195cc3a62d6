"""Controller scale: how many concurrent canary deployments one API process and W workers supervise.

    .venv/bin/python bench/scale.py --deployments 1000 --duration 120 [--workers 1] [--compare main]

Production mode on real parts: PostgreSQL 127.0.0.1:5432 (a fresh database, dropped afterwards), Redis
(CANARYD_BENCH_REDIS, default redis://127.0.0.1:6394/2: the bench flushes that database), one `canaryd
serve` process and W worker processes. The workers run canaryd's own worker loop (`TickWorker`: same
queue, concurrency and timings as `canaryd worker`) and its own `RolloutDriver`, except that proxies
and servers are replaced by `bench/standin.NullOutside`, which does no I/O (bench only: no setting of
canaryd can select it).

Setup (documented shortcut): N servers sets, N applications and N deployments are written in bulk with
COPY, not through 3 N API calls. Each deployment is already monitoring (its canary deployed, at stage 1-3
of 10/25/50/75/100 %, health check every 30 s, stage_duration 300-600 s, stages started at random
times, so stage changes are spread out); its next tick is due at a random time in the first 30 s and
put on the Redis tick queue as the engine would. `--history K` adds K old events per deployment.

Tick lag is `now - Loaded.due` as the driver measures it (the `canaryd_tick_lag_seconds` figure), over
every tick due inside the window; ticks still not started at the end count with their lag so far (a
saturated worker cannot hide its backlog). The last line is
`deployments=N workers=W ticks=T p50_lag_ms=X p99_lag_ms=Y`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")
PG_ADMIN = ["-h", "127.0.0.1", "-U", "postgres"]
REDIS = os.environ.get("CANARYD_BENCH_REDIS", "redis://127.0.0.1:6394/2")
HEALTH_INTERVAL = 30
STAGES = [10.0, 25.0, 50.0, 75.0, 100.0]
MAX_DEPLOYMENTS = 20_000
MAX_DURATION = 900


# --- the worker process (stand-in outside, lag recorder) ------------------------------------------------


def worker_process(out: Path) -> None:
    """A `canaryd worker` whose driver uses the no-I/O stand-in and records every tick's lag."""
    sys.path.insert(0, str(ROOT / "bench"))
    from sqlalchemy import event
    from standin import NullOutside

    from canaryd.engine.driver import LeaseTerms, RolloutDriver
    from canaryd.observability import Metrics
    from canaryd.runtime import Runtime
    from canaryd.settings import Settings

    class LagMetrics(Metrics):
        def __init__(self) -> None:
            super().__init__()
            self.lags: list[tuple[float, float]] = []
            self.statements = 0

        def tick_started(self, lag_s: float) -> None:
            super().tick_started(lag_s)
            self.lags.append((time.time(), lag_s))

    settings = Settings()
    metrics = LagMetrics()
    # CPU seconds spent in the garbage collector (this wrapper, so both sides of --compare report it).
    collector = {"cpu_s": 0.0, "since": 0.0}

    def time_collections(phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            collector["since"] = time.process_time()
        else:
            collector["cpu_s"] += time.process_time() - collector["since"]

    gc.callbacks.append(time_collections)
    background: list[asyncio.Task[None]] = []

    def make_driver(rt: Runtime) -> RolloutDriver:
        """canaryd's own driver over the runtime, with the stand-in outside; starts the lag recorder."""
        terms = LeaseTerms(settings.lease_seconds, settings.max_retry_backoff)

        def count(*_: Any) -> None:
            metrics.statements += 1

        event.listen(rt.db_engine.sync_engine, "before_cursor_execute", count)
        time_idle(asyncio.get_running_loop())
        background.append(asyncio.create_task(flush_forever()))
        out.with_suffix(".ready").touch()
        return RolloutDriver(
            rt.store, NullOutside(), rt.clock, rt.bus, rt.scheduler, metrics, terms, rt.owner
        )

    idle = {"s": 0.0}

    def time_idle(loop: asyncio.AbstractEventLoop) -> None:
        """Counts the wall time the event loop waits in its selector (nothing ready to run): the share of
        the window the worker's loop left its core idle, apart from the time it was runnable but not
        running (other processes, CPU steal)."""
        selector = loop._selector  # type: ignore[attr-defined]
        select = selector.select

        def timed(timeout: float | None = None) -> Any:
            started = time.perf_counter()
            try:
                return select(timeout)
            finally:
                idle["s"] += time.perf_counter() - started

        selector.select = timed

    async def flush_forever() -> None:
        """Appends the lags noted since the last second, and the statement count so far, to `out`."""
        written = 0
        with out.open("a") as f:
            while True:
                await asyncio.sleep(1.0)
                lags, written = metrics.lags[written:], len(metrics.lags)
                chunk = {
                    "lags": lags,
                    "statements": metrics.statements,
                    "gc_cpu_s": collector["cpu_s"],
                    "at": time.time(),
                    "idle_s": idle["s"],
                }
                f.write(json.dumps(chunk) + "\n")
                f.flush()

    try:
        from canaryd.worker.tick_worker import TickWorker
    except ImportError:  # a revision before the Redis tick queue (--compare): its workers were arq's
        arq_worker_process(settings, make_driver, background)
        return
    asyncio.run(TickWorker(settings, make_driver=make_driver).async_run())


def arq_worker_process(settings: Any, make_driver: Any, background: list[Any]) -> None:
    """The same worker for a revision whose `canaryd worker` was arq's (worker/arq_worker.py)."""
    from canaryd.runtime import open_runtime
    from canaryd.worker import arq_worker

    async def startup(ctx: dict[str, Any]) -> None:
        stack = contextlib.AsyncExitStack()
        rt = await stack.enter_async_context(open_runtime(settings, "worker"))
        ctx["stack"], ctx["driver"] = stack, make_driver(rt)
        ctx["reconciler"] = asyncio.create_task(rt.reconcile_forever())

    async def shutdown(ctx: dict[str, Any]) -> None:
        for task in background:
            task.cancel()
        await arq_worker.shutdown(ctx)

    async def run() -> None:
        worker = arq_worker.make_worker(settings)
        worker.on_startup, worker.on_shutdown = startup, shutdown
        try:
            await worker.async_run()
        except asyncio.CancelledError:
            with contextlib.suppress(asyncio.CancelledError):  # arq cancels jobs in flight on the way out
                await worker.close()

    asyncio.run(run())


# --- setup -----------------------------------------------------------------------------------------------


def config_of(rng: random.Random) -> dict[str, Any]:
    from canaryd.domain.config import CanaryConfig

    duration = rng.randrange(300, 601, 30)
    return CanaryConfig(
        stages=STAGES, stage_duration=duration, health_check_interval=HEALTH_INTERVAL
    ).model_dump(mode="json")


def applied_routes(sids: list[int], srv_rows: list[Any], percentage: float) -> str:
    """The proxy routes the deployment's stage put in place (its first server the canary), as the
    application records them: a monitoring tick then finds nothing to push, as it would in a real rollout
    that reached this stage. Left empty, every deployment's first tick in the window pushed its routes and
    rewrote the application (about half the ticks of a 60 s window)."""
    from canaryd.domain.config import DEFAULT_MAX_WEIGHT
    from canaryd.domain.pool import PoolServer, desired_backends
    from canaryd.domain.types import State
    from canaryd.engine.proxies import backends_json

    pool = [PoolServer(sid, srv_rows[sid - 1][2], 8000, "v2" if sid == sids[0] else "v1") for sid in sids]
    backends = desired_backends(
        State.MONITORING, pool, frozenset(sids[:1]), "v2", percentage, None, DEFAULT_MAX_WEIGHT
    )
    return json.dumps(backends_json(backends))


async def bulk_insert(dsn: str, n: int, servers: int, history: int, t0: datetime, seed: int) -> list[Any]:
    """Writes servers, applications, deployments (and old events) with COPY; returns (id, token, due)."""
    import asyncpg

    rng = random.Random(seed)
    now = datetime.now(UTC)
    conn = await asyncpg.connect(dsn)
    try:
        proxy_id = n * servers + 1
        srv_rows = [
            (
                i,
                f"s{i}",
                f"127.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255 or 1}",
                "local",
                22,
                "root",
                "{}",
                now,
            )
            for i in range(1, n * servers + 1)
        ]
        srv_rows.append((proxy_id, "proxy", "127.0.0.1", "local", 22, "root", "{}", now))
        await conn.copy_records_to_table(
            "servers",
            records=srv_rows,
            columns=["id", "name", "host", "transport", "ssh_port", "ssh_user", "labels", "created_at"],
        )
        proxy = json.dumps(
            {"kind": "nginx", "server_id": proxy_id, "config_path": "/tmp/x.conf", "reload_command": "true"}
        )
        app_rows, link_rows, dep_rows, ev_rows, jobs = [], [], [], [], []
        event_id = 0
        for a in range(1, n + 1):
            sids = list(range((a - 1) * servers + 1, a * servers + 1))
            config = config_of(rng)
            stage = rng.randrange(0, 3)
            applied = applied_routes(sids, srv_rows, STAGES[stage])
            app_rows.append((a, f"app{a}", 8000, "/health", "v1", "true", None, proxy, 1, applied, now))
            link_rows += [(a, sid) for sid in sids]
            started = now - timedelta(seconds=rng.uniform(0, config["stage_duration"]))
            due = t0 + timedelta(seconds=rng.uniform(0, HEALTH_INTERVAL))
            token = f"tick:{a}:{uuid.uuid4().hex}"
            canary, stable = sids[:1], sids[1:]
            versions = {str(sid): ("v2" if sid in canary else "v1") for sid in sids}
            dep_rows.append(
                (a, a, a, None, None, "v2", "v1", "canary", json.dumps(config), "in_progress", "monitoring",
                 None, stage, STAGES[stage], json.dumps(canary), json.dumps(stable), json.dumps(versions),
                 "{}", started, "{}", "{}", 0, 0, 0, "[]", 1, token, due, None, None, "bench", now, now, None)
            )  # fmt: skip
            for seq in range(1, history + 1):
                event_id += 1
                ev_rows.append(
                    (event_id, a, seq, now - timedelta(seconds=history - seq), "health_check", None, None,
                     stage + 1, STAGES[stage], '{"stage": 1}', "[]", "canaryd")
                )  # fmt: skip
            jobs.append((a, token, due))
        await conn.copy_records_to_table(
            "applications",
            records=app_rows,
            columns=["id", "name", "port", "health_path", "current_version", "deploy_command",
                     "stop_command", "proxy", "proxy_generation", "proxy_applied", "created_at"],
        )  # fmt: skip
        await conn.copy_records_to_table(
            "application_servers", records=link_rows, columns=["application_id", "server_id"]
        )
        await conn.copy_records_to_table(
            "deployments",
            records=dep_rows,
            columns=["id", "application_id", "active_application_id", "idempotency_key",
                     "request_fingerprint", "version", "previous_version", "strategy", "canary_config",
                     "status", "canary_status", "paused_from", "current_canary_stage",
                     "canary_traffic_percentage", "canary_server_ids", "stable_server_ids",
                     "server_versions", "canary_metrics_snapshot", "canary_stage_started_at", "stage_stats",
                     "baseline_stats", "log_offset", "consecutive_health_failures", "attempts", "reasons",
                     "state_version", "tick_token", "next_tick_at", "lease_owner", "lease_until",
                     "created_by", "created_at", "updated_at", "finished_at"],
        )  # fmt: skip
        for i in range(0, len(ev_rows), 100_000):
            await conn.copy_records_to_table(
                "deployment_events",
                records=ev_rows[i : i + 100_000],
                columns=["id", "deployment_id", "seq", "at", "kind", "from_state", "to_state", "stage",
                         "traffic_percentage", "metrics", "reasons", "actor"],
            )  # fmt: skip
        for table in ("servers", "applications", "deployments", "deployment_events"):
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT coalesce(max(id), 1) FROM {table}))"
            )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return jobs


async def enqueue(jobs: list[Any], src: Path) -> None:
    """The first tick of each deployment, scheduled as `src`'s scheduler does: on the Redis tick queue, or
    as arq jobs for a revision before it (--compare)."""
    if (src / "canaryd" / "worker" / "tick_worker.py").exists():
        from redis.asyncio import Redis

        from canaryd.engine.scheduler import TICKS_KEY

        redis = Redis.from_url(REDIS)
        try:
            for i in range(0, len(jobs), 1000):
                await redis.zadd(TICKS_KEY, {token: due.timestamp() for _, token, due in jobs[i : i + 1000]})
        finally:
            await redis.aclose()
        return
    from arq import create_pool
    from arq.connections import RedisSettings

    pool = await create_pool(RedisSettings.from_dsn(REDIS))
    try:
        for i in range(0, len(jobs), 500):
            await asyncio.gather(
                *(
                    pool.enqueue_job("tick", dep, token, _job_id=token, _defer_until=due)
                    for dep, token, due in jobs[i : i + 500]
                )
            )
    finally:
        await pool.aclose()


async def backlog(dsn: str, end: datetime) -> list[float]:
    """Lags so far of ticks due before `end` that never started (their deployments hold no lease)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT next_tick_at FROM deployments WHERE next_tick_at < $1 AND tick_token IS NOT NULL "
            "AND (lease_until IS NULL OR lease_until < $1)",
            end,
        )
    finally:
        await conn.close()
    return [(end - r["next_tick_at"]).total_seconds() for r in rows]


async def json_sizes(dsn: str) -> tuple[float, float]:
    """Mean size in bytes of a deployment's metrics snapshot and of an event's metrics, as stored."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        snapshot = await conn.fetchval("SELECT avg(length(canary_metrics_snapshot::text)) FROM deployments")
        event = await conn.fetchval(
            "SELECT avg(length(metrics::text)) FROM deployment_events WHERE kind = 'health_check' AND id > "
            "(SELECT coalesce(max(id), 0) - 1000 FROM deployment_events)"
        )
    finally:
        await conn.close()
    return float(snapshot or 0), float(event or 0)


# --- one run ---------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backend_pids(database: str) -> list[int]:
    """PostgreSQL's backend processes serving `database` (their process title names it)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if f" {database} ".encode() in (proc / "cmdline").read_bytes().replace(b"\0", b" "):
                    pids.append(int(proc.name))
    return pids


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_once(args: argparse.Namespace, src: Path, label: str) -> dict[str, Any]:
    name = f"canaryd_bench_scale_{os.getpid()}_{label}"
    dsn = f"postgresql://postgres@127.0.0.1:5432/{name}"
    tmp = Path(f"/tmp/canaryd-scale-{os.getpid()}-{label}")
    tmp.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": str(src),
        "CANARYD_DATABASE_URL": dsn.replace("postgresql://", "postgresql+asyncpg://"),
        "CANARYD_REDIS_URL": REDIS,
        "CANARYD_LOG_LEVEL": "WARNING",
    }
    subprocess.run(["dropdb", *PG_ADMIN, "--if-exists", name], check=True, capture_output=True)
    subprocess.run(["createdb", *PG_ADMIN, name], check=True, capture_output=True)
    subprocess.run(
        [PY, "-c", "import sys; from canaryd.db.migrate import upgrade; upgrade(sys.argv[1])", env["CANARYD_DATABASE_URL"]],
        check=True, env=env,
    )  # fmt: skip
    subprocess.run(["redis-cli", "-u", REDIS, "flushdb"], check=True, capture_output=True)
    nice = ["nice", "-n", "10"]
    procs: list[subprocess.Popen[bytes]] = []
    outs = [tmp / f"worker{i}.json" for i in range(args.workers)]
    try:
        api = subprocess.Popen(
            [*nice, str(ROOT / ".venv" / "bin" / "canaryd"), "serve", "--port", str(args.api_port)], env=env
        )
        procs.append(api)
        for out in outs:
            out.unlink(missing_ok=True)
            out.with_suffix(".ready").unlink(missing_ok=True)
            procs.append(
                subprocess.Popen(
                    [*nice, PY, str(Path(__file__).resolve()), "--worker-process", str(out)],
                    env=env,
                    stderr=out.with_suffix(".log").open("w"),
                )
            )
        deadline = time.monotonic() + 60
        while not all(o.with_suffix(".ready").exists() for o in outs):
            if time.monotonic() > deadline:
                raise SystemExit("workers did not start within 60 s")
            time.sleep(0.2)
        started = time.monotonic()
        t0 = datetime.now(UTC) + timedelta(seconds=5 + args.deployments / 1500)
        jobs = asyncio.run(bulk_insert(dsn, args.deployments, args.servers, args.history, t0, args.seed))
        asyncio.run(enqueue(jobs, src))
        setup_s = time.monotonic() - started
        late = (datetime.now(UTC) - t0).total_seconds()
        if late > 0:
            print(f"[{label}] warning: setup finished {late:.1f} s after the first tick was due", flush=True)
        time.sleep(max(0.0, (t0 - datetime.now(UTC)).total_seconds()))
        cpu0 = [cpu_seconds(p.pid) for p in procs]
        time.sleep(min(5.0, args.duration / 4))  # the workers' connection pools have grown by now
        backends = backend_pids(name)
        pg0 = sum(cpu_seconds(pid) for pid in backends)
        time.sleep(args.duration - min(5.0, args.duration / 4))
        end = datetime.now(UTC)
        cpu1 = [cpu_seconds(p.pid) for p in procs]
        pg1 = sum(cpu_seconds(pid) for pid in backends)
        left = asyncio.run(backlog(dsn, end))
        snapshot_bytes, event_bytes = asyncio.run(json_sizes(dsn))
        time.sleep(2.5)  # the workers' last lags reach their files
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["dropdb", *PG_ADMIN, "--if-exists", "--force", name], capture_output=True)
    t0s, ends = t0.timestamp(), end.timestamp()
    lags, statements, all_ticks, gc_cpu, idle_s = [], 0, 0, 0.0, 0.0
    for out in outs:
        if out.exists():
            chunks = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
            noted = [pair for chunk in chunks for pair in chunk["lags"]]
            lags += [lag for at, lag in noted if t0s <= at - lag < ends]
            statements += chunks[-1]["statements"] if chunks else 0
            gc_cpu += chunks[-1].get("gc_cpu_s", 0.0) if chunks else 0.0
            all_ticks += len(noted)
            # The loop's idle seconds over the window (the flushes each second nearest its ends).
            timed = [(c["at"], c["idle_s"]) for c in chunks if "idle_s" in c and t0s <= c["at"] <= ends]
            if len(timed) > 1:
                idle_s += (timed[-1][1] - timed[0][1]) * args.duration / (timed[-1][0] - timed[0][0])
    ticks = len(lags)
    lags += left
    pg_window = args.duration - min(5.0, args.duration / 4)
    worker_cpu = sum(b - a for a, b in zip(cpu0[1:], cpu1[1:], strict=True))
    return {
        "label": label,
        "src": str(src),
        "deployments": args.deployments,
        "workers": args.workers,
        "ticks": ticks,
        "not_started": len(left),
        "ticks_per_s": ticks / args.duration,
        "p50_lag_ms": pct(lags, 0.50) * 1000,
        "p99_lag_ms": pct(lags, 0.99) * 1000,
        "max_lag_ms": max(lags, default=float("nan")) * 1000,
        "worker_cpu_ms_per_tick": worker_cpu * 1000 / ticks if ticks else float("nan"),
        "worker_cpu_share": worker_cpu / args.duration,
        # Per worker: the share of the window its event loop waited with nothing to run.
        "loop_idle_share": idle_s / args.duration / args.workers,
        "pg_cpu_ms_per_tick": (pg1 - pg0) * 1000 / (ticks * pg_window / args.duration)
        if ticks
        else float("nan"),
        "api_cpu_s": cpu1[0] - cpu0[0],
        "snapshot_json_bytes": snapshot_bytes,
        "event_json_bytes": event_bytes,
        "sql_per_tick": statements / all_ticks if all_ticks else float("nan"),
        # Over the worker's whole run (every tick it ran, not only the window's): its collector's share.
        "gc_cpu_ms_per_tick": gc_cpu * 1000 / all_ticks if all_ticks else float("nan"),
        "setup_s": setup_s,
    }


def source_tree(rev: str) -> Path:
    """`rev`'s src/ (for --compare), exported with `git archive` under /tmp (no worktree is created)."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", rev], check=True, capture_output=True, text=True
    ).stdout.strip()
    path = Path(f"/tmp/canaryd-scale-rev-{commit}")
    if not path.exists():
        path.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", commit, "src"], check=True, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", str(path)], input=archive.stdout, check=True)
    return path / "src"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deployments", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds measured")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--servers", type=int, default=3, help="servers per application (1 canary)")
    parser.add_argument("--history", type=int, default=0, help="old events per deployment")
    parser.add_argument("--compare", metavar="REV", help="run REV's src first (e.g. main), then this tree's")
    parser.add_argument("--api-port", type=int, default=18094)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--worker-process", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_process:
        worker_process(args.worker_process)
        return
    if not (1 <= args.deployments <= MAX_DEPLOYMENTS and 1 <= args.duration <= MAX_DURATION):
        parser.error(f"--deployments 1..{MAX_DEPLOYMENTS}, --duration 1..{MAX_DURATION}")
    if not 1 <= args.workers <= 4 or not 2 <= args.servers <= 50 or not 0 <= args.history <= 1000:
        parser.error("--workers 1..4, --servers 2..50, --history 0..1000")
    print("stand-in: proxies and servers are bench/standin.NullOutside (no I/O; benchmark only)", flush=True)
    print(
        f"deployments={args.deployments} servers/app={args.servers} history={args.history} "
        f"health_check_interval={HEALTH_INTERVAL}s duration={args.duration:g}s workers={args.workers}",
        flush=True,
    )
    runs = []
    if args.compare:
        runs.append(run_once(args, source_tree(args.compare), args.compare.replace("/", "_")))
    runs.append(run_once(args, ROOT / "src", "this"))
    keys = ["ticks", "not_started", "ticks_per_s", "p50_lag_ms", "p99_lag_ms", "max_lag_ms",
            "worker_cpu_ms_per_tick", "gc_cpu_ms_per_tick", "worker_cpu_share", "loop_idle_share", "pg_cpu_ms_per_tick", "sql_per_tick", "snapshot_json_bytes", "event_json_bytes", "api_cpu_s", "setup_s"]  # fmt: skip
    print(f"{'':24}" + "".join(f"{r['label']:>14}" for r in runs))
    for key in keys:
        places = 2 if key.endswith("per_tick") or key.endswith("share") else 1  # CPU figures move by 0.05
        print(f"{key:24}" + "".join(f"{r[key]:>14.{places}f}" for r in runs))
    last = runs[-1]
    print(
        f"deployments={last['deployments']} workers={last['workers']} ticks={last['ticks']} "
        f"p50_lag_ms={last['p50_lag_ms']:.0f} p99_lag_ms={last['p99_lag_ms']:.0f}"
    )


if __name__ == "__main__":
    main()
