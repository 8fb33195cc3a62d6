"""Metrics (prometheus-client, one private registry per Runtime), logging set-up and decision logs.

Nothing here holds state at import time: `Metrics()` is created by each Runtime, `configure_logging()` is
called once by the CLI. The engine and the services call the short methods of `Metrics` and
`record_events()`; see docs/operations.md for every metric family and log field.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from canaryd.domain.types import State

#: Every lifecycle state, so a state with no deployment reads 0 instead of vanishing from /metrics.
DEPLOYMENT_STATES = tuple(state.value for state in State)
#: The fixed set of rollback reasons (a label with free text would make one time series per message).
ROLLBACK_REASONS = (
    "operator",
    "errors",
    "latency",
    "health",
    "host_load",
    "slo",
    "no_data",
    "metric_source",
    "inconclusive",
    "step_failed",
    "check",
    "other",
)
#: Libraries whose INFO lines drown the decisions (1,229 httpx lines in 15 minutes of one rollout).
CHATTY_LOGGERS = (
    "httpx",
    "httpcore",
    "transitions",
    "asyncssh",
    "uvicorn.access",
    "aiosqlite",
    "alembic",
)
DECISION_LOGGER = "canaryd.decisions"
#: Event kinds that are observations, not decisions: logged at DEBUG only.
OBSERVATION_KINDS = frozenset({"health_check"})

_APPLY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_LAG_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 15.0, 60.0, 300.0)
_API_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Metrics:
    """The process's metric families, registered in a registry of its own (tests make many runtimes)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._rollout_families(r)
        self._tick_families(r)
        self._io_families(r)

    def _rollout_families(self, r: CollectorRegistry) -> None:
        """Deployments, stages, rollbacks and verdicts."""
        self.deployments = Gauge(
            "canaryd_deployments",
            "Deployments by lifecycle state, read from the database when /metrics is scraped.",
            ["state"],
            registry=r,
        )
        self.canary_share = Gauge(
            "canaryd_canary_share_percent",
            "Share of requests the proxy gives the canary of the application's active deployment "
            "(read from the database at scrape time; applications without an active deployment are absent).",
            ["application"],
            registry=r,
        )
        self.transitions = Counter(
            "canaryd_stage_transitions",
            "Recorded deployment events that change state or stage, by event kind and state reached.",
            ["kind", "to_state"],
            registry=r,
        )
        self.rollbacks = Counter(
            "canaryd_rollbacks",
            "Rollbacks started, by reason (" + ", ".join(ROLLBACK_REASONS) + ").",
            ["reason"],
            registry=r,
        )
        self.verdicts = Counter(
            "canaryd_judge_verdicts",
            "Verdicts of the judge at each check, by judge and outcome (pass, fail, inconclusive).",
            ["judge", "outcome"],
            registry=r,
        )

    def _tick_families(self, r: CollectorRegistry) -> None:
        """The engine's ticks."""
        self.tick_lag = Histogram(
            "canaryd_tick_lag_seconds",
            "How late a tick started compared with the time it was scheduled for.",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.ticks = Counter("canaryd_ticks", "Ticks run by this process.", registry=r)
        self.step_failures = Counter(
            "canaryd_step_failures",
            "Tick steps that failed for an expected reason (unreachable, refused, timed out) and were retried or rolled back.",
            registry=r,
        )
        self.tick_errors = Counter(
            "canaryd_tick_errors", "Ticks that raised an unexpected exception (a bug).", registry=r
        )
        self.reconciled = Counter(
            "canaryd_reconciled_ticks", "Overdue ticks the reconciler scheduled again.", registry=r
        )

    def _io_families(self, r: CollectorRegistry) -> None:
        """Proxies, the HTTP API and webhook deliveries."""
        self.proxy_apply = Histogram(
            "canaryd_proxy_apply_seconds",
            "Time from pushing a proxy configuration to seeing the proxy serve it, by proxy kind.",
            ["proxy"],
            buckets=_APPLY_BUCKETS,
            registry=r,
        )
        self.api_requests = Histogram(
            "canaryd_api_request_duration_seconds",
            "HTTP API request durations, by method, route template and status code.",
            ["method", "route", "status"],
            buckets=_API_BUCKETS,
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "canaryd_webhook_deliveries",
            "Webhook delivery attempts by outcome: delivered (2xx), retried (will be tried again), failed "
            "(its last attempt failed).",
            ["outcome"],
            registry=r,
        )
        self.webhook_latency = Histogram(
            "canaryd_webhook_delivery_seconds",
            "Time from an event to its webhook delivery being acknowledged (2xx).",
            buckets=_LAG_BUCKETS,
            registry=r,
        )

    # --- what the engine and the services call ------------------------------------------------------
    def tick_started(self, lag_s: float) -> None:
        self.ticks.inc()
        self.tick_lag.observe(max(0.0, lag_s))

    def step_failed(self) -> None:
        self.step_failures.inc()

    def tick_error(self) -> None:
        self.tick_errors.inc()

    def reconciled_ticks(self, count: int) -> None:
        self.reconciled.inc(count)

    def proxy_applied(self, kind: str, seconds: float) -> None:
        self.proxy_apply.labels(proxy=kind).observe(max(0.0, seconds))

    def transition(self, kind: str, to_state: str, reason: str | None = None) -> None:
        """One recorded state or stage change; a rollback also counts under its reason."""
        self.transitions.labels(kind=kind, to_state=to_state).inc()
        if kind == "rollback_started":
            self.rollbacks.labels(reason=reason if reason in ROLLBACK_REASONS else "other").inc()

    def verdict(self, judge: str, outcome: str) -> None:
        self.verdicts.labels(judge=judge, outcome=outcome).inc()

    def webhook_delivery(self, outcome: str, since_event_s: float) -> None:
        self.webhook_deliveries.labels(outcome=outcome).inc()
        if outcome == "delivered":
            self.webhook_latency.observe(max(0.0, since_event_s))

    def api_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.api_requests.labels(method=method, route=route, status=str(status)).observe(seconds)

    # --- scrape ---------------------------------------------------------------------------------------
    def set_database_figures(self, states: Mapping[str, int], shares: Mapping[str, float]) -> None:
        """Figures read from the database for this scrape (any process may have changed them)."""
        for state in DEPLOYMENT_STATES:
            self.deployments.labels(state=state).set(states.get(state, 0))
        self.canary_share.clear()
        for application, share in shares.items():
            self.canary_share.labels(application=application).set(share)

    def render(self) -> bytes:
        """The Prometheus text exposition (version 0.0.4)."""
        return generate_latest(self.registry)


# --- decisions -----------------------------------------------------------------------------------------


def rollback_reason(event: Mapping[str, Any]) -> str:
    """The fixed label for why a rollback started, from its event (actor, verdict, reasons)."""
    actor = str(event.get("actor") or "")
    if actor.startswith("token:") or actor == "operator":
        return "operator"
    metrics = event.get("metrics") or {}
    if isinstance(metrics, dict) and metrics.get("check"):  # a webhook check's failure_action
        return "check"
    verdict = metrics.get("verdict") if isinstance(metrics, dict) else None
    if isinstance(verdict, dict):
        for item in verdict.get("metrics") or []:
            if isinstance(item, dict) and item.get("outcome") == "fail":
                return _metric_reason(str(item.get("metric", "")))
    text = " ".join(str(r) for r in event.get("reasons") or []).lower()
    if "metric source" in text:
        return "metric_source"
    if "inconclusive" in text:
        return "inconclusive"
    if isinstance(verdict, dict) and verdict.get("outcome") == "inconclusive":
        return "inconclusive"
    if text:
        return "step_failed"
    return "other"


def _metric_reason(metric: str) -> str:
    for prefix, reason in (
        ("error", "errors"),
        ("latency", "latency"),
        ("slow", "latency"),
        ("health", "health"),
        ("cpu", "host_load"),
        ("memory", "host_load"),
        ("slo", "slo"),
        ("no_data", "no_data"),
    ):
        if metric.startswith(prefix):
            return reason
    return "other"


def _evidence(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The short evidence of a decision: requests and errors per cohort, and the verdict's outcome."""
    out: dict[str, Any] = {}
    for cohort in ("canary", "stable"):
        figures = metrics.get(cohort)
        if isinstance(figures, dict):
            out[cohort] = {k: figures.get(k) for k in ("requests", "errors", "p95_ms")}
    verdict = metrics.get("verdict")
    if isinstance(verdict, dict):
        out["verdict"] = verdict.get("outcome")
    return out


def decision_message(event: Mapping[str, Any]) -> str:
    """One readable line for an event: what happened, to which deployment, why."""
    kind = str(event.get("kind"))
    parts = [f"deployment {event.get('deployment_id')}: {kind}"]
    if event.get("from_state") and event.get("to_state") and event["from_state"] != event["to_state"]:
        parts.append(f"{event['from_state']} → {event['to_state']}")
    elif event.get("to_state") and not event.get("from_state"):
        parts.append(f"→ {event['to_state']}")
    if event.get("stage") is not None:
        parts.append(f"stage {event['stage']}")
    if event.get("traffic_percentage") is not None:
        parts.append(f"canary share {float(event['traffic_percentage']):g} %")
    evidence = _evidence(event.get("metrics") or {})
    for cohort in ("canary", "stable"):
        if cohort in evidence:
            f = evidence[cohort]
            parts.append(f"{cohort} {f.get('errors')}/{f.get('requests')} errors")
    reasons = "; ".join(str(r) for r in event.get("reasons") or [])
    if reasons:
        parts.append(f"({reasons})")
    parts.append(f"by {event.get('actor')}")
    return " ".join(parts)


def log_decision(event: Mapping[str, Any], application_id: int, logger: logging.Logger | None = None) -> None:
    """Logs one committed event with its ids as structured fields (INFO; observations at DEBUG)."""
    logger = logger or logging.getLogger(DECISION_LOGGER)
    kind = str(event.get("kind"))
    level = logging.DEBUG if kind in OBSERVATION_KINDS else logging.INFO
    if not logger.isEnabledFor(level):
        return
    fields: dict[str, Any] = {
        "decision": kind,
        "deployment_id": event.get("deployment_id"),
        "application_id": application_id,
        "seq": event.get("seq"),
        "from_state": event.get("from_state"),
        "to_state": event.get("to_state"),
        "stage": event.get("stage"),
        "canary_share": event.get("traffic_percentage"),
        "actor": event.get("actor"),
        "reasons": list(event.get("reasons") or []),
    }
    evidence = _evidence(event.get("metrics") or {})
    if evidence:
        fields["evidence"] = evidence
    if kind == "rollback_started":
        fields["rollback_reason"] = rollback_reason(event)
    if kind == "step_failed":
        fields["attempt"] = (event.get("metrics") or {}).get("attempt")
    logger.log(level, decision_message(event), extra={"canaryd": fields})


def record_events(metrics: Metrics, application_id: int, events: Iterable[Mapping[str, Any]]) -> None:
    """Called after a transaction committed `events` (event views or bus messages): logs each decision and
    counts transitions, rollbacks by reason and judge verdicts."""
    for event in events:
        log_decision(event, application_id)
        kind = str(event.get("kind"))
        to_state = event.get("to_state")
        changes = (to_state and to_state != event.get("from_state")) or kind == "stage_advanced"
        if changes:
            reason = rollback_reason(event) if kind == "rollback_started" else None
            metrics.transition(kind, str(to_state or "monitoring"), reason)
        snapshot = event.get("metrics") or {}
        verdict = snapshot.get("verdict") if isinstance(snapshot, dict) else None
        if isinstance(verdict, dict) and verdict.get("outcome"):
            metrics.verdict(str(snapshot.get("judge") or "unknown"), str(verdict["outcome"]))


# --- logging set-up ------------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the structured `canaryd` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "canaryd", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Root logging for a canaryd process: `fmt` "json" or "text"; chatty libraries at WARNING unless the
    level is DEBUG. Replaces any handler set before (uvicorn's included, which is started without one)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    numeric = logging.getLevelName(level.upper())
    root.setLevel(numeric if isinstance(numeric, int) else logging.INFO)
    quiet = root.level > logging.DEBUG
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.NOTSET)
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
