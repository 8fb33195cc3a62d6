"""Creating deployments, reading their status and history, and the operators' actions on them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from canaryd.api.schemas import ActionRequest, DeploymentCreate
from canaryd.db.engine import unit_of_work
from canaryd.db.models import Deployment, DeploymentEvent, utcnow
from canaryd.db.repositories import (
    ApplicationRepository,
    DeploymentRepository,
    EventRepository,
    ServerRepository,
)
from canaryd.domain.config import ProxySpec
from canaryd.domain.lifecycle import IllegalTransition
from canaryd.domain.selection import SelectionError, canary_server_count
from canaryd.domain.split import check_split_feasible
from canaryd.domain.types import State
from canaryd.engine.tick import EventDraft, apply_trigger, new_token
from canaryd.observability import record_events
from canaryd.runtime import Runtime
from canaryd.services.errors import Conflict, Invalid, NotFound, problem
from canaryd.services.views import deployment_status, event_view, lifecycle_of


@dataclass(frozen=True, slots=True)
class Created:
    status: dict[str, Any]
    replayed: bool  # True when an Idempotency-Key matched an earlier request


def _fingerprint(payload: DeploymentCreate) -> str:
    return hashlib.sha256(json.dumps(payload.model_dump(), sort_keys=True).encode()).hexdigest()


async def create_deployment(
    rt: Runtime, app_id: int, payload: DeploymentCreate, idempotency_key: str | None, actor: str
) -> Created:
    fingerprint = _fingerprint(payload)
    async with unit_of_work(rt.sessions) as session:
        app = await ApplicationRepository(session).get(app_id, for_update=True)
        if app is None:
            raise NotFound(f"application {app_id} not found")
        if app.proxy_generation == 0:
            raise Conflict(f"application {app_id} is still being registered: its proxy is not configured yet")
        deployments = DeploymentRepository(session)
        if idempotency_key is not None:
            earlier = await deployments.by_idempotency_key(app_id, idempotency_key)
            if earlier is not None:
                return Created(await _replay(session, earlier, fingerprint), replayed=True)
        active = await deployments.active_for_application(app_id)
        if active is not None:
            raise Conflict(
                f"application {app_id} already has an active deployment ({active.id}, {active.canary_status}); "
                "wait for it to finish or roll it back"
            )
        try:
            canaries = canary_server_count(len(app.server_ids), payload.config.canary_server_percentage)
        except SelectionError as exc:
            raise Invalid([problem(["path", "application_id"], str(exc))]) from exc
        infeasible = infeasible_stages(
            payload.config.stages,
            canaries,
            len(app.server_ids) - canaries,
            ProxySpec.model_validate(app.proxy),
        )
        if infeasible:
            raise Invalid(infeasible)
        if payload.version == app.current_version:
            raise Invalid(
                [problem(["body", "version"], f"version {payload.version} is already the current version")]
            )
        now = utcnow()
        dep = Deployment(
            application_id=app_id,
            active_application_id=app_id,
            idempotency_key=idempotency_key,
            request_fingerprint=fingerprint,
            version=payload.version,
            previous_version=app.current_version,
            strategy=payload.strategy,
            canary_config=payload.config.model_dump(),
            status="pending",
            canary_status=State.PENDING.value,
            server_versions={str(sid): app.current_version for sid in app.server_ids},
            created_by=actor,
            created_at=now,
            updated_at=now,
            tick_token=None,
            next_tick_at=now,
        )
        try:
            await deployments.add(dep)
        except IntegrityError as exc:
            # Lost a race with a concurrent request: report what won.
            raise Conflict(
                f"application {app_id} already has an active deployment, or this Idempotency-Key was used"
            ) from exc
        dep.tick_token = new_token(dep.id)
        row = await EventRepository(session).append(
            EventDraft(
                "deployment_created",
                to_state=State.PENDING.value,
                metrics={"config": dep.canary_config},
                reasons=[f"{dep.previous_version} → {dep.version}"],
                actor=actor,
            ).to_row(dep.id, now)
        )
        servers = await ServerRepository(session).many(app.server_ids)
        status = deployment_status(dep, servers)
        event = event_view(row)
        token, at = dep.tick_token, now
    record_events(rt.metrics, app_id, [event])
    await rt.bus.publish(dep.id, {"type": "event", **event})
    await rt.scheduler.schedule(dep.id, token, at)
    return Created(status, replayed=False)


def infeasible_stages(
    stages: Sequence[float], canaries: int, stables: int, spec: ProxySpec
) -> list[dict[str, Any]]:
    """One problem per stage the proxy's weights cannot express. Below 1 % the tolerance is a tenth of the
    stage (0.1 points above), so that a 0.01 % stage is not silently run at 0.025 %."""
    problems = []
    for i, stage in enumerate(stages):
        why = check_split_feasible(
            canaries, stables, stage, spec.weight_limit, min(0.1, stage / 10), proxy=spec.kind
        )
        if why is not None:
            problems.append(problem(["body", "config", "stages", i], f"stage {i + 1}: {why}"))
    return problems


async def _replay(session: AsyncSession, earlier: Deployment, fingerprint: str) -> dict[str, Any]:
    if earlier.request_fingerprint != fingerprint:
        raise Conflict("this Idempotency-Key was already used with a different request")
    servers = await ServerRepository(session).many([*earlier.canary_server_ids, *earlier.stable_server_ids])
    return deployment_status(earlier, servers)


async def get_status(session: AsyncSession, deployment_id: int) -> dict[str, Any]:
    dep = await DeploymentRepository(session).get(deployment_id)
    if dep is None:
        raise NotFound(f"deployment {deployment_id} not found")
    servers = await ServerRepository(session).many([*dep.canary_server_ids, *dep.stable_server_ids])
    return deployment_status(dep, servers)


async def list_deployments(
    session: AsyncSession, app_id: int | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    rows = await DeploymentRepository(session).list(app_id, limit, offset)
    servers = await ServerRepository(session).many(
        sorted({int(s) for d in rows for s in [*d.canary_server_ids, *d.stable_server_ids]})
    )
    return [deployment_status(d, servers) for d in rows]


async def list_events(
    session: AsyncSession, deployment_id: int, after_seq: int, limit: int
) -> list[dict[str, Any]]:
    if await DeploymentRepository(session).get(deployment_id) is None:
        raise NotFound(f"deployment {deployment_id} not found")
    rows: Sequence[DeploymentEvent] = await EventRepository(session).list(deployment_id, after_seq, limit)
    return [event_view(e) for e in rows]


async def act(
    rt: Runtime, deployment_id: int, action: str, request: ActionRequest, actor: str
) -> dict[str, Any]:
    """Pause, resume, promote (all, or `to: next`) or roll back, serialised with ticks and other operators."""
    now = utcnow()
    async with rt.locks.hold(deployment_id), unit_of_work(rt.sessions) as session:
        dep = await DeploymentRepository(session).get(deployment_id, for_update=True)
        if dep is None:
            raise NotFound(f"deployment {deployment_id} not found")
        before = State(dep.canary_status)
        draft = _apply_action(dep, action, request, actor, now)
        dep.state_version += 1
        dep.updated_at = now
        if State(dep.canary_status) == State.PAUSED and draft.kind == "paused":
            dep.tick_token, dep.next_tick_at = None, None
        else:
            dep.tick_token, dep.next_tick_at = new_token(dep.id), now
        draft.from_state, draft.to_state = before.value, dep.canary_status
        row = await EventRepository(session).append(draft.to_row(dep.id, now))
        servers = await ServerRepository(session).many([*dep.canary_server_ids, *dep.stable_server_ids])
        status = deployment_status(dep, servers)
        event = event_view(row)
        schedule = (dep.tick_token, dep.next_tick_at)
    record_events(rt.metrics, dep.application_id, [event])
    await rt.bus.publish(deployment_id, {"type": "event", **event})
    await rt.bus.publish(deployment_id, {"type": "status", **status})
    if schedule[0] is not None and schedule[1] is not None:
        await rt.scheduler.schedule(deployment_id, schedule[0], schedule[1])
    return status


def _apply_action(
    dep: Deployment, action: str, request: ActionRequest, actor: str, now: datetime
) -> EventDraft:
    state = State(dep.canary_status)
    stages: list[float] = list(dep.canary_config["stages"])
    note = [f"{action} by {actor}" + (f": {request.reason}" if request.reason else "")]
    if action == "promote" and request.to == "next":
        if state not in (State.MONITORING, State.PAUSED):
            raise Conflict(
                f"cannot promote to the next stage of a deployment that is {state.value}; "
                "that is possible while monitoring or paused"
            )
        nxt = dep.current_canary_stage + 1
        if nxt < len(stages):
            dep.current_canary_stage = nxt
            dep.canary_stage_started_at = now
            dep.stage_stats = {}
            dep.reasons = note
            return EventDraft(
                "stage_advanced", stage=nxt + 1, traffic_percentage=stages[nxt], reasons=note, actor=actor
            )
        # Past the last stage, "next" is promotion itself.
    lifecycle = lifecycle_of(dep)
    why = lifecycle.why_not(action)
    if why is not None:
        raise Conflict(why)
    try:
        new_state = apply_trigger(dep, action, now)
    except IllegalTransition as exc:  # cannot happen after why_not; kept so a bug is a 409, not a 500
        raise Conflict(str(exc)) from exc
    dep.reasons = note
    if action == "resume" and new_state == State.MONITORING:
        dep.canary_stage_started_at = now  # the stage's clock restarts; its traffic so far still counts
    kind = {"pause": "paused", "resume": "resumed", "promote": "promoted", "rollback": "rollback_started"}[
        action
    ]
    return EventDraft(kind, stage=dep.current_canary_stage + 1, reasons=note, actor=actor)


async def reconcile(rt: Runtime, grace_seconds: float) -> int:
    """Re-schedules every active deployment whose next tick is more than `grace_seconds` overdue."""
    now = utcnow()
    cutoff = now - timedelta(seconds=grace_seconds)
    async with rt.sessions() as session:
        overdue = [d.id for d in await DeploymentRepository(session).overdue(cutoff, now)]
    scheduled = 0
    for deployment_id in overdue:
        async with rt.locks.hold(deployment_id), unit_of_work(rt.sessions) as session:
            dep = await DeploymentRepository(session).get(deployment_id, for_update=True)
            if dep is None or dep.next_tick_at is None or dep.next_tick_at >= cutoff:
                continue
            if dep.lease_until is not None and dep.lease_until >= now:
                continue
            dep.tick_token, dep.next_tick_at = new_token(dep.id), now
            token = dep.tick_token
        await rt.scheduler.schedule(deployment_id, token, now)
        scheduled += 1
    if scheduled:
        rt.metrics.reconciled_ticks(scheduled)
    return scheduled
