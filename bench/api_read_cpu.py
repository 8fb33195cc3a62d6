"""CPU per status read inside the API process alone: the ASGI app called directly (no HTTP client, no
uvicorn), on a fresh PostgreSQL database of 1,000 monitoring deployments and a stored token (as bench/api.py).
On a machine shared with other work this is steadier than the full bench, and it runs in seconds.

    .venv/bin/python bench/api_read_cpu.py [--reads 800] [--compare main]

With --compare, REV's src and this tree's are measured alternately (`--pairs` times, best of three runs
each), so both see the same load."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import PG_ADMIN, ROOT, bulk_insert, source_tree

#: The measuring interpreters get the token the setup stored through the environment.
TOKEN = os.environ.get("READCPU_TOKEN") or "cdt_readcpu" + os.urandom(16).hex()


async def _setup(dsn: str) -> None:
    import asyncpg

    await bulk_insert(dsn, 1000, 3, 0, datetime.now(UTC) + timedelta(days=1), 14)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO api_tokens (name, token_hash, scope, created_at) VALUES ('bench', $1, 'read', now())",
            hashlib.sha256(TOKEN.encode()).hexdigest(),
        )
    finally:
        await conn.close()


async def _measure(url: str, reads: int) -> float:
    """Best of three: CPU ms per GET /api/v1/deployments/{id} (after 200 reads to warm up)."""
    from canaryd.api.app import create_app
    from canaryd.settings import Settings

    app = create_app(Settings(database_url=url, redis_url=os.environ["READCPU_REDIS"]))
    headers = [(b"host", b"bench"), (b"authorization", f"Bearer {TOKEN}".encode())]

    async def get(path: str) -> int:
        sent: list[dict[str, object]] = []

        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
                 "root_path": "", "headers": headers, "client": ("127.0.0.1", 1),
                 "server": ("127.0.0.1", 80), "app": app, "state": {}}  # fmt: skip
        await app(scope, receive, send)
        return int(sent[0]["status"])  # type: ignore[call-overload]

    async with app.router.lifespan_context(app):
        for i in range(200):
            assert await get(f"/api/v1/deployments/{1 + i % 1000}") == 200
        best = float("inf")
        for _ in range(3):
            started = time.process_time()
            for i in range(reads):
                await get(f"/api/v1/deployments/{1 + (i * 7919) % 1000}")
            best = min(best, (time.process_time() - started) * 1000 / reads)
    return best


def _one(src: Path, url: str, reads: int, redis: str) -> float:
    """One measurement in a fresh interpreter running `src`."""
    code = (
        "import asyncio, sys, uvloop; sys.path.insert(0, sys.argv[1]); import api_read_cpu as b; "
        "uvloop.install(); print(asyncio.run(b._measure(sys.argv[2], int(sys.argv[3]))))"
    )
    env = {**os.environ, "PYTHONPATH": str(src), "READCPU_REDIS": redis, "READCPU_TOKEN": TOKEN}
    out = subprocess.run(
        [str(ROOT / ".venv/bin/python"), "-c", code, str(Path(__file__).resolve().parent), url, str(reads)],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reads", type=int, default=800)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--compare", metavar="REV")
    args = parser.parse_args()
    if not (50 <= args.reads <= 20_000 and 1 <= args.pairs <= 20):
        parser.error("--reads 50..20000, --pairs 1..20")
    name = f"canaryd_bench_readcpu_{os.getpid()}"
    dsn = f"postgresql://postgres@127.0.0.1:5432/{name}"
    url = dsn.replace("postgresql://", "postgresql+asyncpg://")
    redis = os.environ.get("CANARYD_BENCH_REDIS", "redis://127.0.0.1:6394/2")
    subprocess.run(["createdb", *PG_ADMIN, name], check=True, capture_output=True)
    try:
        subprocess.run(
            [str(ROOT / ".venv/bin/python"), "-c", "import sys; from canaryd.db.migrate import upgrade; upgrade(sys.argv[1])", url],
            check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )  # fmt: skip
        asyncio.run(_setup(dsn))
        trees = ([(args.compare, source_tree(args.compare))] if args.compare else []) + [
            ("this", ROOT / "src")
        ]
        results: dict[str, list[float]] = {label: [] for label, _ in trees}
        for _ in range(args.pairs):
            for label, src in trees:
                results[label].append(_one(src, url, args.reads, redis))
        print(
            f"CPU ms per status read, in process ({args.reads} reads, best of 3 per run), load {os.getloadavg()[0]:.1f}"
        )
        for label, values in results.items():
            print(f"{label:>8}: min {min(values):.2f}  runs " + " ".join(f"{v:.2f}" for v in values))
    finally:
        subprocess.run(["dropdb", *PG_ADMIN, "--if-exists", "--force", name], capture_output=True)


if __name__ == "__main__":
    main()
