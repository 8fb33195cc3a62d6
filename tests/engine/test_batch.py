"""Batched ticks: the group-commit Batcher, and the store's batched take and commit on both databases (each
tick keeps its own lease, token, fencing and outcome inside a shared transaction)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from asyncpg.exceptions import CannotConnectNowError
from sqlalchemy import event, select, update
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from canaryd.db.engine import unit_of_work
from canaryd.db.models import Application, Deployment, DeploymentEvent, Server
from canaryd.db.repositories import ApplicationRepository
from canaryd.domain.config import CanaryConfig
from canaryd.domain.plan import Change, Event, EventKind, Facts
from canaryd.engine.batch import Batcher
from canaryd.engine.driver import database_down
from canaryd.engine.locks import DeploymentLocks
from canaryd.engine.store import Acquired, Committed, LeaseLost, Loaded, RolloutStore

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


async def test_requests_submitted_together_go_in_one_batch_in_order() -> None:
    """submit_many (a write's events and status, published together) puts its requests in one batch."""
    batches: list[list[int]] = []

    async def run(requests: Sequence[int]) -> list[int]:
        batches.append(list(requests))
        return [r * 10 for r in requests]

    batcher: Batcher[int, int] = Batcher(run, max_size=10)
    assert await batcher.submit_many([1, 2, 3]) == [10, 20, 30]
    assert batches == [[1, 2, 3]]


async def test_requests_arriving_during_a_batch_form_the_next_one() -> None:
    """The first request runs at once, alone; the ones submitted while it runs go together next."""
    batches: list[list[int]] = []
    release = asyncio.Event()

    async def run(requests: Sequence[int]) -> list[int]:
        batches.append(list(requests))
        if len(batches) == 1:
            await release.wait()
        return [r * 10 for r in requests]

    batcher: Batcher[int, int] = Batcher(run, max_size=3)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    rest = [asyncio.create_task(batcher.submit(n)) for n in (2, 3, 4, 5)]
    await asyncio.sleep(0)
    release.set()
    assert await first == 10
    assert [await t for t in rest] == [20, 30, 40, 50]
    assert batches == [[1], [2, 3, 4], [5]]


async def test_a_failing_batch_is_run_again_one_request_at_a_time() -> None:
    """One request's fault fails only that request; per-request exceptions reach their own callers."""
    batches: list[list[int]] = []

    async def run(requests: Sequence[int]) -> list[int | BaseException]:
        batches.append(list(requests))
        if 13 in requests and len(requests) > 1:
            raise RuntimeError("a bug with 13")
        return [LookupError(n) if n == 13 else n for n in requests]

    batcher: Batcher[int, int] = Batcher(run, max_size=10)
    results = await asyncio.gather(*(batcher.submit(n) for n in (12, 13, 14)), return_exceptions=True)
    assert results[0] == 12 and results[2] == 14
    assert isinstance(results[1], LookupError)
    assert batches == [[12, 13, 14], [12], [13], [14]]


async def test_a_cancelled_request_is_dropped_before_its_batch_runs() -> None:
    batches: list[list[int]] = []
    release = asyncio.Event()

    async def run(requests: Sequence[int]) -> list[int]:
        batches.append(list(requests))
        await release.wait()
        return list(requests)

    batcher: Batcher[int, int] = Batcher(run, max_size=10)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    dropped, kept = asyncio.create_task(batcher.submit(2)), asyncio.create_task(batcher.submit(3))
    await asyncio.sleep(0)
    dropped.cancel()
    release.set()
    assert await first == 1 and await kept == 3
    assert batches == [[1], [3]]


# --- the store ---------------------------------------------------------------------------------------------


async def monitoring_deployments(sessions: async_sessionmaker[AsyncSession], n: int) -> list[tuple[int, str]]:
    """`n` applications (two servers each, one proxy server) with one monitoring deployment each; returns
    their (deployment id, scheduled tick token)."""
    config = CanaryConfig(stages=[10, 50, 100], stage_duration=60).model_dump(mode="json")
    out = []
    async with unit_of_work(sessions) as session:
        proxy = Server(name="proxy", host="127.0.0.1", transport="local")
        session.add(proxy)
        await session.flush()
        for i in range(n):
            servers = [
                Server(name=f"s{i}-{k}", host=f"127.0.1.{2 * i + k + 1}", transport="local") for k in (0, 1)
            ]
            session.add_all(servers)
            await session.flush()
            spec = {
                "kind": "nginx",
                "server_id": proxy.id,
                "config_path": "/tmp/x.conf",
                "reload_command": "true",
            }
            app = Application(
                name=f"app{i}", port=8000, current_version="v1", deploy_command="true", proxy=spec
            )
            await ApplicationRepository(session).add(app, [s.id for s in servers])
            dep = Deployment(
                application_id=app.id,
                active_application_id=app.id,
                version="v2",
                previous_version="v1",
                canary_config=config,
                status="in_progress",
                canary_status="monitoring",
                canary_server_ids=[servers[0].id],
                stable_server_ids=[servers[1].id],
                canary_stage_started_at=NOW,
                created_at=NOW,
                updated_at=NOW,
            )
            session.add(dep)
            await session.flush()
            dep.tick_token, dep.next_tick_at = f"tick:{dep.id}:first", NOW
            out.append((dep.id, dep.tick_token))
    return out


@pytest.fixture
def statements(sessions: async_sessionmaker[AsyncSession]) -> list[str]:
    """Every SQL statement the sessions' engine runs from now on."""
    seen: list[str] = []
    engine = sessions.kw["bind"]
    event.listen(engine.sync_engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    return seen


async def test_takes_and_commits_of_several_ticks_share_transactions(
    sessions: async_sessionmaker[AsyncSession], statements: list[str]
) -> None:
    """Five ticks take their leases together: two get theirs, a stale token is STALE, a deployment leased
    by another live tick is BUSY, a second take of a deployment in the same batch is BUSY; all in one
    transaction of a handful of statements. Their commits go together too: a tick whose lease was taken
    over meanwhile gets LeaseLost and writes nothing, the other is written with its event numbered next."""
    (a, ta), (b, tb), (c, _), (d, td) = await monitoring_deployments(sessions, 4)
    async with unit_of_work(sessions) as session:
        held = update(Deployment).where(Deployment.id == d)
        await session.execute(held.values(lease_owner="other", lease_until=NOW + timedelta(seconds=60)))
        session.add(DeploymentEvent(deployment_id=a, seq=1, kind="stage_advanced", at=NOW))
    store = RolloutStore(sessions, DeploymentLocks(process_local=True))
    until = NOW + timedelta(seconds=15)
    asks = [(a, ta, "lease-a"), (b, tb, "lease-b"), (c, f"tick:{c}:old", "lease-c"), (d, td, "lease-d"),
            (a, ta, "lease-a2")]  # fmt: skip
    before = len(statements)
    got = await asyncio.gather(*(store.take(i, t, lease, NOW, until, 60.0) for i, t, lease in asks))
    took = len(statements) - before
    assert isinstance(got[0], Loaded) and isinstance(got[1], Loaded)
    assert got[2:] == [Acquired.STALE, Acquired.BUSY, Acquired.BUSY]
    assert got[0].snapshot.deployment_id == a and got[1].snapshot.deployment_id == b
    assert [s.name for s in got[1].servers.values()] == ["s1-0", "s1-1"]
    # One at a time this is 5 transactions of 2-4 statements; the batch is one of at most 6.
    assert took <= 6, statements[before:]
    async with unit_of_work(sessions) as session:  # b's lease is taken over while its tick runs
        taken = update(Deployment).where(Deployment.id == b)
        await session.execute(taken.values(lease_owner="thief", lease_until=NOW + timedelta(seconds=60)))

    def plan(n: int) -> tuple[Facts, Change]:
        check = Event(EventKind.HEALTH_CHECK, (f"check {n}",), stage=1, metrics={"n": n})
        return Facts(health_failures=0, events=(check,)), Change(next_tick_in=30.0)

    later = NOW + timedelta(seconds=1)
    done = await asyncio.gather(
        *(store.commit(i, lease, 0, *plan(i), None, later, None, NOW) for i, lease in ((a, "lease-a"), (b, "lease-b"))),
        return_exceptions=True,
    )  # fmt: skip
    assert isinstance(done[0], Committed) and isinstance(done[1], LeaseLost)
    assert done[0].schedule is not None and done[0].schedule[1] == NOW + timedelta(seconds=30)
    assert [m["seq"] for m in done[0].messages if m["type"] == "event"] == [2]
    async with sessions() as session:
        rows = {dep.id: dep for dep in (await session.execute(select(Deployment))).scalars()}
        events = (await session.execute(select(DeploymentEvent).order_by(DeploymentEvent.id))).scalars().all()
    assert rows[a].lease_owner is None and rows[a].tick_token == done[0].schedule[0]
    assert rows[b].lease_owner == "thief" and rows[b].tick_token == tb  # nothing of the lost tick's
    assert [(e.deployment_id, e.seq, e.kind) for e in events] == [
        (a, 1, "stage_advanced"),
        (a, 2, "health_check"),
    ]


def test_a_server_shutting_down_or_starting_up_counts_as_the_database_down() -> None:
    """asyncpg's refusal while PostgreSQL shuts down or starts up reaches the driver as the SQLAlchemy
    adapter's bare `Error` (not a DBAPIError); a tick must retry it, not take it for a bug."""
    adapted = AsyncAdapt_asyncpg_dbapi.Error("the database system is shutting down")
    adapted.__cause__ = CannotConnectNowError("the database system is shutting down")
    assert database_down(adapted)
    assert not database_down(AsyncAdapt_asyncpg_dbapi.Error("syntax error"))


async def test_the_judges_state_stays_in_the_row_and_out_of_the_status(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """The take's deployment and servers are read with Core, outside the session; the commit writes the row
    back with the check's figures and the judge's state, which the next take reads, while the status to
    publish shows the figures without that state."""
    ((dep_id, token),) = await monitoring_deployments(sessions, 1)
    store = RolloutStore(sessions, DeploymentLocks(process_local=True))
    got = await store.take(dep_id, token, "lease-1", NOW, NOW + timedelta(seconds=15), 60.0)
    assert isinstance(got, Loaded) and got.row is not None
    assert [s.name for s in got.servers.values()] == ["s0-0", "s0-1"] and got.proxy_server.name == "proxy"
    figures = {
        "judge": "sequential",
        "verdict": {"outcome": "pass"},
        "judge_state": {"stage": 1, "checks": 3},
    }
    done = await store.commit(
        dep_id, "lease-1", got.state_version, Facts(metrics_snapshot=figures), Change(next_tick_in=30.0),
        None, NOW + timedelta(seconds=1), got.servers, NOW, got.row,
    )  # fmt: skip
    assert done.status["metrics"] == {"judge": "sequential", "verdict": {"outcome": "pass"}}
    assert done.schedule is not None
    async with sessions() as session:
        row = await session.get(Deployment, dep_id)
        assert row is not None and row.canary_metrics_snapshot == figures and row.lease_owner is None
    again = await store.take(dep_id, done.schedule[0], "lease-2", NOW, NOW + timedelta(seconds=15), 60.0)
    assert isinstance(again, Loaded) and again.snapshot.evidence.stage == 1
