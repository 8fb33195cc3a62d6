"""A success answer means the change is committed: a row created by one request is visible to the very next
one (FastAPI ends yield dependencies after the response by default; canaryd's unit of work must not)."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from .cluster import cluster


async def test_created_rows_are_committed_before_the_answer(
    tmp_path: Path, pg_url: str, redis_url: str
) -> None:
    """100 times: POST /servers answers 201, and at that instant another connection already sees the row."""
    conn = await asyncpg.connect(pg_url.replace("+asyncpg", ""))
    missing = []
    try:
        async with cluster(tmp_path, pg_url, redis_url) as c:
            await c.start_api()
            async with c.client() as api:
                for i in range(100):
                    r = await api.post(
                        "/servers", json={"name": f"c{i}", "host": "127.0.0.1", "transport": "local"}
                    )
                    assert r.status_code == 201, r.text
                    if await conn.fetchrow("SELECT 1 FROM servers WHERE id = $1", r.json()["id"]) is None:
                        missing.append(r.json()["id"])
    finally:
        await conn.close()
    assert not missing, f"{len(missing)} servers answered 201 before they were committed"
