"""Creating deployments, reading their status and history, and the operators' actions on them."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from canaryd.db.engine import read, unit_of_work
from canaryd.db.models import Application, Deployment, DeploymentEvent
from canaryd.db.repositories import (
    ApplicationRepository,
    DeploymentRepository,
    EventRepository,
    ServerRepository,
)
from canaryd.domain import matching
from canaryd.domain.checks import redacted
from canaryd.domain.config import BlueGreenSettings, CanaryConfig, ProxySpec, RollingSettings
from canaryd.domain.defaults import config_sources, effective_config, set_fields, source_loc
from canaryd.domain.lifecycle import IllegalTransition
from canaryd.domain.plan import (
    ActionRefused,
    Change,
    Event,
    EventKind,
    OperatorAction,
    OperatorRequest,
    Snapshot,
)
from canaryd.domain.rollout import decide
from canaryd.domain.selection import SelectionError, canary_server_count
from canaryd.domain.split import check_split_feasible
from canaryd.domain.strategy import (
    GREEN_OFFSET,
    MIRROR_PROXIES,
    rolling_feasibility,
    rolling_stages,
    runs_green,
    strategy_for,
)
from canaryd.domain.strategy import problems as strategy_problems
from canaryd.domain.types import State
from canaryd.engine.driver import announce
from canaryd.engine.outbox import enqueue
from canaryd.engine.store import event_row, new_token
from canaryd.engine.views import deployment_status, event_view
from canaryd.observability import record_events
from canaryd.runtime import Runtime
from canaryd.services.errors import Conflict, Invalid, NotFound, problem
from canaryd.services.schemas import ActionRequest, DeploymentCreate

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Created:
    status: dict[str, Any]
    replayed: bool  # True when an Idempotency-Key matched an earlier request


def _fingerprint(payload: DeploymentCreate) -> str:
    """The request as sent (the settings it gives, not the application's defaults it inherits), so that a
    replay matches whatever the application's defaults became in between."""
    sent = {"version": payload.version, "strategy": payload.strategy, "config": set_fields(payload.config)}
    return hashlib.sha256(json.dumps(sent, sort_keys=True).encode()).hexdigest()


async def create_deployment(
    rt: Runtime, app_id: int, payload: DeploymentCreate, idempotency_key: str | None, actor: str
) -> Created:
    """Creates a pending deployment and schedules its first tick (or replays an earlier identical request)."""
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
        settings = _effective_settings(app, payload, rt.settings.min_stage_duration)
        now = rt.clock.now()
        dep = _new_deployment(app, payload, settings, idempotency_key, fingerprint, actor, now)
        try:
            await deployments.add(dep)
        except IntegrityError as exc:
            # Lost a race with a concurrent request: report what won.
            raise Conflict(
                f"application {app_id} already has an active deployment, or this Idempotency-Key was used"
            ) from exc
        dep.tick_token = new_token(dep.id)
        created = _created_event(dep, settings, actor)
        row = await EventRepository(session).append(event_row(dep.id, created, now, None))
        await enqueue(session, dep, [row])  # webhook deliveries commit with their event
        status = deployment_status(dep, await ServerRepository(session).many(app.server_ids))
        event, token = event_view(row), dep.tick_token
    record_events(rt.metrics, app_id, [event])
    await rt.bus.publish(dep.id, {"type": "event", **event})
    await rt.scheduler.schedule(dep.id, token, now)
    return Created(status, replayed=False)


def _created_event(dep: Deployment, settings: _Settings, actor: str) -> Event:
    """The first event of a deployment's history: the versions, the request's notes, and the settings it
    runs with (secrets redacted) and where each came from."""
    return Event(
        EventKind.DEPLOYMENT_CREATED,
        (f"{dep.previous_version} → {dep.version}", *settings.notes),
        to_state=State.PENDING,
        metrics={"config": redacted(dep.canary_config), "config_sources": dep.config_sources},
        actor=actor,
    )


@dataclass(frozen=True, slots=True)
class _Settings:
    config: CanaryConfig
    sources: dict[str, str]  # the settings not at their default: "deployment" or "application"
    notes: tuple[str, ...]  # for the history: deprecated names the request used


def _effective_settings(app: Application, payload: DeploymentCreate, floor: int) -> _Settings:
    """The deployment's settings (its own over the application's defaults), or 422 listing every problem of
    the request that only the application and the settings can tell."""
    overrides = set_fields(payload.config)
    config, found = effective_config(app.deployment_defaults, overrides, floor)
    problems = [problem(list(p.loc), p.msg) for p in found]
    problems += [
        problem(list(loc), msg) for loc, msg in strategy_problems(payload.strategy, overrides, config)
    ]
    if config is not None and not problems:
        config = strategy_for(payload.strategy).effective(config)
    if payload.version == app.current_version:
        problems.append(
            problem(["body", "version"], f"version {payload.version} is already the current version")
        )
    if config is not None and payload.strategy == "rolling":  # equal weights: only the batch size can fail
        config, infeasible = _rolling_plan(app, config)
        problems = infeasible + problems
    elif config is not None and runs_green(payload.strategy, config):  # blue_green, mirror then: blue_green
        problems = _blue_green_feasibility(app, config, overrides, payload.strategy) + problems
    elif config is not None:
        problems = _feasibility_problems(app, config, overrides, payload.strategy) + problems
    if config is None or problems:
        raise Invalid(problems)
    notes = tuple(
        f"config: {name} is deprecated and was read as analysis: {config.analysis}"
        for name in payload.config.deprecated_names
    )
    for note in notes:
        logger.warning("application %d: %s", app.id, note)
    sources = config_sources(app.deployment_defaults, overrides)
    return _Settings(config, {k: v for k, v in sources.items() if v != "default"}, notes)


def _rolling_plan(app: Application, config: CanaryConfig) -> tuple[CanaryConfig, list[dict[str, Any]]]:
    """A rolling update's stages (one per batch) for this application's servers, or why it cannot keep a
    server serving."""
    servers = len(app.server_ids)
    found = rolling_feasibility(config.rolling or RollingSettings(), servers)
    where: list[str | int] = ["body", "config", "rolling"] if servers >= 2 else ["path", "application_id"]
    if found:
        return config, [problem(where, why) for why in found]
    return rolling_stages(config, servers), []


def _feasibility_problems(
    app: Application, config: CanaryConfig, overrides: dict[str, Any], strategy: str = "canary"
) -> list[dict[str, Any]]:
    try:
        canaries = canary_server_count(len(app.server_ids), config.canary_server_percentage)
    except SelectionError as exc:
        return [problem(["path", "application_id"], str(exc))]
    spec = ProxySpec.model_validate(app.proxy)
    stables = len(app.server_ids) - canaries
    if config.ab is not None:  # A/B: no split to express, but rules the proxy must be able to read
        where: list[str | int] = (
            ["body", "config", "ab", "match"]
            if "ab" in overrides
            else ["application", "deployment_defaults", "ab", "match"]
        )
        return [
            problem(where, why)
            for why in matching.proxy_problems(config.ab.rules(), spec.kind, spec.listen, spec.router_rule)
        ]
    if (
        strategy == "mirror" and config.mirror is not None
    ):  # a mirror phase, then (then: canary) the canary's own stages
        return mirror_problems(config, spec) + infeasible_stages(
            config.stages[1:] if config.mirror.then == "canary" else [],
            canaries,
            stables,
            spec,
            source_loc("stages", overrides),
        )
    return infeasible_stages(config.stages, canaries, stables, spec, source_loc("stages", overrides))


def _blue_green_feasibility(
    app: Application, config: CanaryConfig, overrides: dict[str, Any], strategy: str
) -> list[dict[str, Any]]:
    """What the application must offer a blue-green deployment: a second port, a stop command (blue is
    stopped after the switch, green after a rollback) and a proxy that can route its test rules (and, for a
    mirror test with then: blue_green, copy requests)."""
    found: list[dict[str, Any]] = []
    who = "strategy blue_green" if strategy == "blue_green" else "a mirror test with then: blue_green"
    if app.green_port is None:
        found.append(
            problem(
                ["application", "green_port"],
                f"{who} needs the application's green_port (the second port of every server, where the new "
                'version starts beside the old): PATCH the application with {"green_port": N}',
            )
        )
    if not app.stop_command:
        found.append(
            problem(
                ["application", "stop_command"],
                f"{who} needs the application's stop_command ({{port}} names the instance): the old version "
                "is stopped after the switch, the new one after a rollback",
            )
        )
    if any(sid >= GREEN_OFFSET for sid in app.server_ids):
        found.append(
            problem(["application", "server_ids"], f"blue_green needs server ids below {GREEN_OFFSET}")
        )
    spec = ProxySpec.model_validate(app.proxy)
    where: list[str | int] = (
        ["body", "config", "blue_green", "test_match"]
        if "blue_green" in overrides
        else ["application", "deployment_defaults", "blue_green", "test_match"]
    )
    rules = (config.blue_green or BlueGreenSettings()).rules()  # the defaults until effective() ran
    found += [
        problem(where, why)
        for why in matching.proxy_problems(rules, spec.kind, spec.listen, spec.router_rule)
    ]
    return found + (mirror_problems(config, spec) if strategy == "mirror" else [])


def _new_deployment(
    app: Application,
    payload: DeploymentCreate,
    settings: _Settings,
    idempotency_key: str | None,
    fingerprint: str,
    actor: str,
    now: datetime,
) -> Deployment:
    return Deployment(
        application_id=app.id,
        active_application_id=app.id,
        idempotency_key=idempotency_key,
        request_fingerprint=fingerprint,
        version=payload.version,
        previous_version=app.current_version,
        strategy=payload.strategy,
        canary_config=settings.config.model_dump(),
        config_sources=settings.sources,
        status="pending",
        canary_status=State.PENDING.value,
        server_versions={str(sid): app.current_version for sid in app.server_ids},
        created_by=actor,
        created_at=now,
        updated_at=now,
        tick_token=None,
        next_tick_at=now,
    )


def mirror_problems(config: CanaryConfig, spec: ProxySpec) -> list[dict[str, Any]]:
    """Whether the application's proxy can run a mirror test: make the copies where canaryd owns the
    routing, and tell the judge the canary's answers to them (docs/strategies.md)."""
    why: str | None = None
    if spec.kind == "nginx" and (spec.listen is None or spec.access_log is None):
        why = "a mirror test on nginx needs the proxy's listen and access_log: the copies are made in the "
        why += "server block canaryd writes, and the canary's answers to them are read from its access log"
    elif spec.kind == "traefik" and spec.router_rule is None:
        why = "a mirror test on Traefik needs the proxy's router_rule: the router canaryd owns must point to "
        why += "the mirroring service"
    elif spec.kind not in MIRROR_PROXIES:
        why = (
            f"strategy mirror is not available on {spec.kind}: it cannot copy requests by itself (it would "
            f"need an SPOE mirroring agent beside it); it runs on {' and '.join(MIRROR_PROXIES)} "
            "(see docs/strategies.md)"
        )
    return [] if why is None else [problem(["body", "strategy"], why)]


def strategy_body_problems(body: object) -> list[dict[str, Any]]:
    """The strategy's problems of a request body that failed validation, so that the one 422 lists them
    with the others (read from the raw body: the effective settings are not known then)."""
    if not isinstance(body, dict) or not isinstance(body.get("strategy", "canary"), str):
        return []
    config = body.get("config")
    own = config if isinstance(config, dict) else {}
    found = strategy_problems(body.get("strategy", "canary"), own, None)
    return [problem(list(loc), msg) for loc, msg in found]


def stage_floor_problems(body: object, floor: int) -> list[dict[str, Any]]:
    """The problem of a stage_duration below the configured floor (CANARYD_MIN_STAGE_DURATION), if any."""
    config = body.get("config") if isinstance(body, dict) else None
    duration = config.get("stage_duration") if isinstance(config, dict) else None
    if isinstance(duration, int) and not isinstance(duration, bool) and 1 <= duration < floor:
        where: list[str | int] = ["body", "config", "stage_duration"]
        return [problem(where, f"stage_duration must be at least {floor} seconds")]
    return []


def infeasible_stages(
    stages: Sequence[float],
    canaries: int,
    stables: int,
    spec: ProxySpec,
    where: Sequence[str] = ("body", "config", "stages"),
) -> list[dict[str, Any]]:
    """One problem per stage the proxy's weights cannot express. Below 1 % the tolerance is a tenth of the
    stage (0.1 points above), so that a 0.01 % stage is not silently run at 0.025 %."""
    problems = []
    for i, stage in enumerate(stages):
        why = check_split_feasible(
            canaries, stables, stage, spec.weight_limit, min(0.1, stage / 10), proxy=spec.kind
        )
        if why is not None:
            problems.append(problem([*where, i], f"stage {i + 1}: {why}"))
    return problems


async def _replay(session: AsyncSession, earlier: Deployment, fingerprint: str) -> dict[str, Any]:
    if earlier.request_fingerprint != fingerprint:
        raise Conflict("this Idempotency-Key was already used with a different request")
    servers = await ServerRepository(session).many([*earlier.canary_server_ids, *earlier.stable_server_ids])
    return deployment_status(earlier, servers)


async def read_status(sessions: async_sessionmaker[AsyncSession], deployment_id: int) -> dict[str, Any]:
    """The status in a read session of its own (once more on a fresh connection if its connection was dead)."""
    return await read(sessions, lambda session: get_status(session, deployment_id))


async def get_status(session: AsyncSession, deployment_id: int) -> dict[str, Any]:
    found = await DeploymentRepository(session).with_server_names(deployment_id)
    if found is None:
        raise NotFound(f"deployment {deployment_id} not found")
    return deployment_status(*found)


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
    """Pause, resume, promote (all, or `to: next`) or roll back: decided by the same function as every tick,
    serialised with ticks and other operators."""
    order = OperatorRequest(OperatorAction(action), actor, request.reason, to_next=request.to == "next")
    now = rt.clock.now()

    def change(snapshot: Snapshot) -> Change:
        return decide(snapshot, order, now).change

    try:
        done = await rt.store.operate(deployment_id, change, now)
    except (ActionRefused, IllegalTransition) as exc:
        raise Conflict(str(exc)) from exc
    if done is None:
        raise NotFound(f"deployment {deployment_id} not found")
    await announce(rt.bus, rt.scheduler, rt.metrics, deployment_id, done)
    status: dict[str, Any] = done.status
    return status
