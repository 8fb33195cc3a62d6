"""The data of a rollout decision: what the decision function is given, and the plan it returns.

`rollout.decide(snapshot, signal, now)` takes a `Snapshot` (the deployment as the database holds it), a
signal (`Observed`: what a tick saw; `OperatorRequest`: a person's action; `StepFailed`: an effect that
did not work) and the time, and returns a `Plan`:

- `effects`: I/O for the engine to carry out, in order (`SetRoutes`, `DeployServer`, `MarkTrafficStart`);
- `facts`: what was learned; always recorded, even when an operator changed the deployment meanwhile;
- `change`: what was decided (a trigger, a new stage, reasons, the next tick); recorded only if nobody
  changed the deployment's state or stage while the tick ran: the operator wins.

Everything here is plain, frozen data. Nothing does I/O or reads a clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from canaryd.domain.config import CanaryConfig, CheckSpec
from canaryd.domain.judge import Evidence
from canaryd.domain.types import Backend, CohortStats, HostLoad, State

#: The version recorded for a server while canaryd changes it: it may run either version.
UNKNOWN_VERSION = "unknown"


class Trigger(StrEnum):
    """Lifecycle triggers (domain/lifecycle.py holds the rules)."""

    START = "start"
    CANARY_READY = "canary_ready"
    AWAIT_APPROVAL = "await_approval"
    APPROVE = "approve"
    PAUSE = "pause"
    RESUME = "resume"
    PROMOTE = "promote"
    COMPLETE = "complete"
    ROLLBACK = "rollback"
    FINISH_ROLLBACK = "finish_rollback"
    FAIL = "fail"


class OperatorAction(StrEnum):
    """What a person may ask of a deployment."""

    PAUSE = "pause"
    RESUME = "resume"
    PROMOTE = "promote"
    ROLLBACK = "rollback"


class EventKind(StrEnum):
    """Kinds of history events."""

    DEPLOYMENT_CREATED = "deployment_created"
    DEPLOY_STARTED = "deploy_started"
    SERVER_DEPLOYED = "server_deployed"
    CANARY_DEPLOYED = "canary_deployed"
    STAGE_ADVANCED = "stage_advanced"
    HEALTH_CHECK = "health_check"
    WAITING_FOR_APPROVAL = "waiting_for_approval"
    APPROVED = "approved"
    PAUSED = "paused"
    RESUMED = "resumed"
    PROMOTED = "promoted"
    SERVER_PROMOTED = "server_promoted"
    COMPLETED = "completed"
    ROLLBACK_STARTED = "rollback_started"
    SERVER_RESTORED = "server_restored"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    STEP_FAILED = "step_failed"
    PROXY_REASSERTED = "proxy_reasserted"
    CHECK_PASSED = "check_passed"
    CHECK_FAILED = "check_failed"
    TRAFFIC_SWITCHED = "traffic_switched"
    INSTANCE_STOPPED = "instance_stopped"


class SourceFailureAction(StrEnum):
    """What a metric source that keeps failing asks for."""

    HOLD = "hold"  # retry at the next check; judge nothing meanwhile
    PAUSE = "pause"
    ROLLBACK = "rollback"
    PROXY = "proxy"  # judge on the proxy's own figures instead


@dataclass(frozen=True, slots=True)
class CheckProgress:
    """Where the deployment's webhook checks are (domain/checks.py): the refusals of the check holding
    `gate` (tries, since when), the checks waived there (failure_action ignore), and how many stages have had
    their during_stage checks called."""

    gate: str | None = None
    check: str | None = None
    tries: int = 0
    since: datetime | None = None
    waived: tuple[str, ...] = ()
    during_fired: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "check": self.check,
            "tries": self.tries,
            "since": self.since.isoformat() if self.since else None,
            "waived": list(self.waived),
            "during_fired": self.during_fired,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> CheckProgress:
        if not data:
            return cls()
        since = data.get("since")
        return cls(
            data.get("gate"),
            data.get("check"),
            int(data.get("tries", 0)),
            datetime.fromisoformat(since) if since else None,
            tuple(str(n) for n in data.get("waived", ())),
            int(data.get("during_fired", 0)),
        )


# --- the snapshot --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerRef:
    """One server of the application."""

    id: int
    name: str
    host: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A deployment as the database holds it when a tick or an operator looks at it."""

    deployment_id: int
    application_id: int
    state: State
    paused_from: State | None
    version: str
    previous_version: str
    config: CanaryConfig
    servers: tuple[ServerRef, ...]
    port: int
    weight_limit: int
    canary_ids: tuple[int, ...] = ()
    #: Every server's version as far as canaryd changed it (`UNKNOWN_VERSION` while being changed).
    versions: Mapping[int, str] = field(default_factory=dict)
    stage_index: int = 0
    stage_started_at: datetime | None = None
    stage_canary: CohortStats = field(default_factory=CohortStats)
    stage_stable: CohortStats = field(default_factory=CohortStats)
    baseline: CohortStats = field(default_factory=CohortStats)
    log_offset: int = 0
    health_failures: int = 0
    attempts: int = 0
    evidence: Evidence = field(default_factory=Evidence)
    reasons: tuple[str, ...] = ()
    #: Cap of the retry backoff in seconds (a setting).
    max_backoff: float = 60.0
    checks: CheckProgress = field(default_factory=CheckProgress)
    #: "canary" or "ab" (domain/strategy.py): what the proxy serves while the canary is tested.
    strategy: str = "canary"
    #: blue_green: the port the new (green) instance of every server listens on (the application's setting).
    green_port: int | None = None
    #: blue_green: when all traffic went to green (None: not switched yet).
    switched_at: datetime | None = None

    def server(self, server_id: int) -> ServerRef:
        return next(s for s in self.servers if s.id == server_id)

    def version_of(self, server_id: int) -> str:
        return self.versions.get(server_id, self.previous_version)

    @property
    def stable_ids(self) -> tuple[int, ...]:
        return tuple(s.id for s in self.servers if s.id not in self.canary_ids)


# --- signals -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HealthReading:
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class TrafficSample:
    """Requests per cohort read from the proxy since the last read, and where the next read starts."""

    canary: CohortStats
    stable: CohortStats
    next_offset: int


@dataclass(frozen=True, slots=True)
class SourceSample:
    """What the metric source answered: the cohorts' figures, or why it failed, or why it was not asked."""

    canary: CohortStats | None = None
    stable: CohortStats | None = None
    error: str | None = None
    skipped: str | None = None
    window_s: int = 0


@dataclass(frozen=True, slots=True)
class Needs:
    """What a tick must observe before deciding (`rollout.needs_of`)."""

    host_loads: tuple[int, ...] = ()
    health: tuple[int, ...] = ()
    traffic: bool = False
    #: Seconds of the stage to ask the metric source about; None: do not ask it.
    source_window: int | None = None
    #: Why the source is not asked although configured (stage too young).
    source_skipped: str | None = None


@dataclass(frozen=True, slots=True)
class Observed:
    """What a tick saw (only what `Needs` asked for is filled in)."""

    host_loads: Mapping[int, HostLoad] = field(default_factory=dict)
    health: Mapping[int, HealthReading] = field(default_factory=dict)
    traffic: TrafficSample | None = None
    source: SourceSample | None = None


@dataclass(frozen=True, slots=True)
class OperatorRequest:
    """A person's action: `to_next` with PROMOTE moves one stage on instead of promoting."""

    action: OperatorAction
    actor: str
    reason: str | None = None
    to_next: bool = False


@dataclass(frozen=True, slots=True)
class StepFailed:
    """An effect or observation failed. `permanent`: doing it again would fail the same way."""

    reason: str
    permanent: bool


@dataclass(frozen=True, slots=True)
class CheckRefused:
    """A webhook check did not answer 2xx (or not in time) at `gate`; `reason` says what it answered."""

    check: CheckSpec
    gate: str
    label: str
    reason: str


Signal = Observed | OperatorRequest | StepFailed | CheckRefused


class ActionRefused(Exception):  # noqa: N818 - says what happened, like IllegalTransition
    """An operator's action that the deployment's state does not allow; nothing changed."""


# --- the plan ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """One history entry to record. `proxy_figures`: the engine adds how the last route change went."""

    kind: EventKind
    reasons: tuple[str, ...] = ()
    from_state: State | None = None
    to_state: State | None = None
    stage: int | None = None
    traffic_percentage: float | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    actor: str = "canaryd"
    proxy_figures: bool = False


@dataclass(frozen=True, slots=True)
class SetRoutes:
    """Make the proxy serve exactly these backends, proven live."""

    backends: tuple[Backend, ...]


@dataclass(frozen=True, slots=True)
class DeployServer:
    """Run the stop and deploy commands for `version` on a drained server, then wait for its health.

    The server's version is recorded as unknown once its commands may have started, and as `version`,
    together with `event`, once it is healthy: a crash in between makes the next tick redo it.
    """

    server_id: int
    version: str
    event: Event
    #: blue_green: the instance's port (None: the application's) and the id its version is recorded under
    #: (None: `server_id`); the green instance starts beside the blue one, which keeps serving.
    port: int | None = None
    record_as: int | None = None


@dataclass(frozen=True, slots=True)
class StopInstance:
    """Run the stop command for the instance of `version` on `port` of a server (no traffic reaches it any
    more), then record it as stopped under the id `record_as` (blue_green: the old instance after the switch,
    or green after a rollback)."""

    server_id: int
    port: int
    record_as: int
    version: str
    event: Event


@dataclass(frozen=True, slots=True)
class MarkTrafficStart:
    """Remember where the proxy's traffic record ends now: the new stage counts from here."""


@dataclass(frozen=True, slots=True)
class CallCheck:
    """POST the deployment's status to a webhook check. `blocking`: a refusal stops the plan here and comes
    back as `CheckRefused`; otherwise it is only recorded. `label` says where, in words ("before stage 2")."""

    check: CheckSpec
    gate: str
    label: str
    stage: int | None
    percentage: float | None
    blocking: bool


Effect = SetRoutes | DeployServer | MarkTrafficStart | CallCheck | StopInstance


@dataclass(frozen=True, slots=True)
class Facts:
    """What was learned. Always recorded. None: unchanged."""

    stage_canary: CohortStats | None = None
    stage_stable: CohortStats | None = None
    baseline: CohortStats | None = None
    log_offset: int | None = None
    health_failures: int | None = None
    metrics_snapshot: Mapping[str, Any] | None = None
    attempts: int | None = None
    events: tuple[Event, ...] = ()
    checks: CheckProgress | None = None


@dataclass(frozen=True, slots=True)
class StageStart:
    """The deployment enters stage `index` at `at` (None: the moment this tick's new routes were proven
    live, so that no request of the previous split counts for the new stage); `keep_traffic` keeps the
    stage's counts (a resume)."""

    index: int
    at: datetime | None
    keep_traffic: bool = False


@dataclass(frozen=True, slots=True)
class Change:
    """What was decided. Recorded only if nobody changed the deployment meanwhile. `next_tick_in`: seconds
    until the next tick; None schedules none."""

    trigger: Trigger | None = None
    stage: StageStart | None = None
    canary_ids: tuple[int, ...] | None = None
    reasons: tuple[str, ...] | None = None
    application_version: str | None = None
    #: blue_green: the switch is live (records `switched_at`).
    switched: bool = False
    #: blue_green, on completion: the application's port and green_port trade places (the new version now
    #: listens on the old green port; the next blue_green starts beside it on the old port).
    swap_ports: bool = False
    events: tuple[Event, ...] = ()
    next_tick_in: float | None = 0.0


@dataclass(frozen=True, slots=True)
class Plan:
    effects: tuple[Effect, ...] = ()
    facts: Facts = field(default_factory=Facts)
    change: Change = field(default_factory=Change)


__all__ = [
    "UNKNOWN_VERSION",
    "ActionRefused",
    "CallCheck",
    "Change",
    "CheckProgress",
    "CheckRefused",
    "DeployServer",
    "Effect",
    "Event",
    "EventKind",
    "Facts",
    "HealthReading",
    "MarkTrafficStart",
    "Needs",
    "Observed",
    "OperatorAction",
    "OperatorRequest",
    "Plan",
    "ServerRef",
    "SetRoutes",
    "Signal",
    "Snapshot",
    "SourceFailureAction",
    "SourceSample",
    "StageStart",
    "StepFailed",
    "StopInstance",
    "TrafficSample",
    "Trigger",
]
