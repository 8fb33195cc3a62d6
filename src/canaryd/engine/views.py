"""How deployments and events look from outside (API, WebSocket, event bus): plain JSON-able dicts."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol

from canaryd.db.models import Deployment, DeploymentEvent
from canaryd.domain import batches
from canaryd.domain.checks import redacted
from canaryd.domain.config import RollingSettings
from canaryd.domain.lifecycle import allowed_triggers
from canaryd.domain.monitoring import shown_figures
from canaryd.domain.strategy import batch_sizes
from canaryd.domain.types import State

#: The triggers an operator may pull; the others belong to the engine.
MANUAL_ACTIONS = frozenset({"pause", "resume", "promote", "rollback"})


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


class Named(Protocol):
    """A server as a status shows it (a Server row, or the status read's ServerName)."""

    @property
    def name(self) -> str: ...

    @property
    def host(self) -> str: ...


def _server_refs(ids: list[Any], servers: Mapping[int, Named]) -> list[dict[str, Any]]:
    refs = []
    for sid in ids:
        server = servers.get(int(sid))
        refs.append(
            {"id": int(sid), "name": server.name if server else None, "host": server.host if server else None}
        )
    return refs


def _batches(dep: Deployment, state: State, servers: Mapping[int, Named]) -> list[dict[str, Any]] | None:
    """A rolling update's batches: each one's servers and where it stands (None for other strategies)."""
    if dep.strategy != "rolling":
        return None
    order = [int(i) for i in (*dep.canary_server_ids, *dep.stable_server_ids)]
    settings = RollingSettings.model_validate(dep.canary_config.get("rolling") or {})
    sizes = batch_sizes(settings, len(order)) if order else ()
    paused_from = State(dep.paused_from) if dep.paused_from else None
    where = batches.progress(state, paused_from, dep.current_canary_stage, len(dep.canary_server_ids), sizes)
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [
        {"batch": i + 1, "servers": _server_refs(order[first : first + size], servers), "state": where[i]}
        for i, (first, size) in enumerate(zip(starts, sizes, strict=True))
    ]


def _next_stage_at(dep: Deployment, state: State) -> datetime | None:
    """When the stage being monitored is due to end; None in every other state."""
    if state == State.MONITORING and dep.canary_stage_started_at is not None:
        stage_duration = int(dep.canary_config.get("stage_duration", 0))
        return dep.canary_stage_started_at + timedelta(seconds=stage_duration)
    return None


def _target_percentage(dep: Deployment, state: State, stages: list[float]) -> float:
    """The canary's share of the split that the current state aims at."""
    target = stages[dep.current_canary_stage] if stages and dep.current_canary_stage < len(stages) else 0.0
    if dep.strategy == "ab" and state is not State.PROMOTING:
        target = 0.0  # an A/B test gives the canary matching requests by rule, never a share of the split
    if dep.strategy == "mirror" and dep.current_canary_stage == 0 and state is not State.PROMOTING:
        target = 0.0  # a mirror phase copies requests to the canary: no client request is the canary's
    if state == State.COMPLETED:
        target = 100.0
    elif state in (State.ROLLING_BACK, State.ROLLED_BACK, State.FAILED):
        target = 0.0
    return target


def _config_sources(dep: Deployment, config: dict[str, Any]) -> dict[str, str] | None:
    """Where each setting came from ("deployment", "application" or "default"); None if not recorded."""
    if dep.config_sources is None:
        return None
    return {k: str(dep.config_sources.get(k, "default")) for k in config}


def _stage_after(dep: Deployment, stages: list[float]) -> dict[str, Any]:
    """The stage after the current one: its number (from 1) and its percentage."""
    return {"stage": dep.current_canary_stage + 2, "percentage": stages[dep.current_canary_stage + 1]}


def deployment_status(dep: Deployment, servers: Mapping[int, Named]) -> dict[str, Any]:
    """The status object of the HTTP contract."""
    config = dep.canary_config
    stages: list[float] = list(config.get("stages", []))
    state = State(dep.canary_status)
    next_stage_at = _next_stage_at(dep, state)
    target = _target_percentage(dep, state, stages)
    # The table answers what may fire in a state; building a `transitions` machine for that cost more than
    # the rest of the view (a status read is the API's most frequent request).
    triggers = allowed_triggers(state)
    staged = (State.MONITORING, State.WAITING_FOR_APPROVAL, State.PAUSED)
    monitoring_began = state in staged and dep.canary_stage_started_at is not None
    waiting = state is State.WAITING_FOR_APPROVAL and dep.current_canary_stage + 1 < len(stages)
    allowed = triggers & MANUAL_ACTIONS | ({"resume"} if waiting else set())
    return {
        "id": dep.id,
        "application_id": dep.application_id,
        "version": dep.version,
        "previous_version": dep.previous_version,
        "strategy": dep.strategy,
        "status": dep.status,
        "canary_status": dep.canary_status,
        "paused_from": dep.paused_from,
        "current_stage": dep.current_canary_stage + 1 if monitoring_began or state == State.PROMOTING else 0,
        "total_stages": len(stages),
        "current_traffic_percentage": dep.canary_traffic_percentage,
        "target_traffic_percentage": target,
        "canary_servers": _server_refs(dep.canary_server_ids, servers),
        "stable_servers": _server_refs(dep.stable_server_ids, servers),
        "server_versions": {str(k): str(v) for k, v in (dep.server_versions or {}).items()},
        "metrics": None
        if dep.canary_metrics_snapshot is None
        else shown_figures(dep.canary_metrics_snapshot),
        "config": redacted(config),
        "config_sources": _config_sources(dep, config),
        "stage_started_at": _iso(dep.canary_stage_started_at) if monitoring_began else None,
        "next_stage_at": _iso(next_stage_at),
        "switched_at": _iso(dep.switched_at),
        "batches": _batches(dep, state, servers),
        "can_promote": "promote" in triggers,
        "can_rollback": "rollback" in triggers,
        "allowed_actions": sorted(allowed),
        "waiting_for": _stage_after(dep, stages) if waiting else None,
        "reasons": dep.reasons,
        "created_by": dep.created_by,
        "created_at": _iso(dep.created_at),
        "updated_at": _iso(dep.updated_at),
        "finished_at": _iso(dep.finished_at),
    }


def event_view(event: DeploymentEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "deployment_id": event.deployment_id,
        "seq": event.seq,
        "at": _iso(event.at),
        "kind": event.kind,
        "from_state": event.from_state,
        "to_state": event.to_state,
        "stage": event.stage,
        "traffic_percentage": event.traffic_percentage,
        "metrics": event.metrics,
        "reasons": event.reasons,
        "actor": event.actor,
    }
