"""Notifications, the pure part: which event kinds may be subscribed to, what a delivery says (the `json`
payload and its Slack rendering), how its body is signed, and when a failed delivery is tried again.

No I/O and no clock: the outbox (engine/outbox.py) stores what `payload()` returns when the event is written,
and renders it with `body()` at each attempt. `body()` is deterministic, so every retry of a delivery sends
the same bytes under the same signature.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from canaryd.domain.plan import EventKind

Format = Literal["json", "slack"]
#: Every event kind but observations (a health check every few seconds is not news).
SUBSCRIBABLE = tuple(k.value for k in EventKind if k is not EventKind.HEALTH_CHECK)
#: Subscribes to every kind in SUBSCRIBABLE, including kinds added later.
ALL_KINDS = "*"
#: The version of the `json` payload's shape (a field `"schema": 1`).
PAYLOAD_SCHEMA = 1
#: The fields of the deployment's status a payload carries.
STATUS_FIELDS = (
    "status",
    "canary_status",
    "current_stage",
    "total_stages",
    "current_traffic_percentage",
    "target_traffic_percentage",
    "previous_version",
    "waiting_for",
    "reasons",
)
#: Slack refuses a section text longer than 3,000 characters.
SLACK_TEXT_MAX = 3000


def kind_problems(events: Sequence[str]) -> list[tuple[int, str]]:
    """(index, message) for every entry of a subscription's event list that is not a subscribable kind."""
    allowed = ", ".join(SUBSCRIBABLE)
    problems = []
    for i, kind in enumerate(events):
        if kind != ALL_KINDS and kind not in SUBSCRIBABLE:
            problems.append((i, f"unknown event kind {kind[:60]!r}; use {ALL_KINDS!r} or one of: {allowed}"))
    return problems


def subscribed(events: Sequence[str], kind: str) -> bool:
    return kind in SUBSCRIBABLE and (ALL_KINDS in events or kind in events)


def payload(
    delivery: str, event: Mapping[str, Any], application: Mapping[str, Any], status: Mapping[str, Any]
) -> dict[str, Any]:
    """The `json` format: the event, the application, and the deployment's status when it happened."""
    return {
        "schema": PAYLOAD_SCHEMA,
        "delivery": delivery,
        "event": {
            "id": event["id"],
            "seq": event["seq"],
            "kind": event["kind"],
            "at": event["at"],
            "from_state": event.get("from_state"),
            "to_state": event.get("to_state"),
            "stage": event.get("stage"),
            "traffic_percentage": event.get("traffic_percentage"),
            "reasons": list(event.get("reasons") or []),
            "actor": event.get("actor"),
        },
        "application": {"id": application["id"], "name": application["name"]},
        "deployment": {
            "id": event["deployment_id"],
            "version": status.get("version"),
            **{k: status.get(k) for k in STATUS_FIELDS},
        },
    }


def body(fmt: Format, data: Mapping[str, Any]) -> bytes:
    """The exact bytes sent for a stored payload in a subscription's format (the same at every attempt)."""
    document = slack_message(data) if fmt == "slack" else data
    return json.dumps(document, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def signature(secret: str, content: bytes) -> str:
    """The `X-Canaryd-Signature` header: `sha256=` and the hex HMAC-SHA256 of the body under the secret."""
    return "sha256=" + hmac.new(secret.encode(), content, hashlib.sha256).hexdigest()


def backoff(attempts: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Seconds to wait after the `attempts`-th failed attempt: base, 2×base, 4×base, … up to `cap`; a
    receiver's Retry-After is honoured when longer (still capped)."""
    delay: float = min(cap, base * 2.0 ** max(0, attempts - 1))
    if retry_after is not None and retry_after > delay:
        delay = min(cap, retry_after)
    return delay


# --- the human sentence and Slack's shape -------------------------------------------------------------------


def _escape(text: str) -> str:
    """Slack mrkdwn needs &, < and > escaped (they start links and mentions)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _share(value: Any) -> str:
    return f"{float(value):g} %" if isinstance(value, int | float) else "?"


def sentence(data: Mapping[str, Any]) -> str:
    """One sentence a person reads at 3 a.m.: which application, which version, what happened."""
    event, dep = data["event"], data["deployment"]
    who = f"*{_escape(str(data['application']['name']))}* {_escape(str(dep.get('version')))}"
    stage = event.get("stage")
    share = _share(event.get("traffic_percentage") if event.get("traffic_percentage") is not None else None)
    total = dep.get("total_stages")
    waiting = dep.get("waiting_for") or {}
    texts = {
        "deployment_created": f"{who}: canary deployment created (from {dep.get('previous_version')}).",
        "canary_deployed": f"{who}: the canary servers run the new version.",
        "stage_advanced": f"{who}: stage {stage} of {total}, the canary now gets {share} of requests.",
        "waiting_for_approval": (
            f"{who} is waiting for approval before stage {waiting.get('stage', '?')} "
            f"({_share(waiting.get('percentage'))}); the canary keeps {share}."
        ),
        "approved": f"{who}: approved by {event.get('actor')}.",
        "paused": f"{who} was paused by {event.get('actor')} at {share}.",
        "resumed": f"{who} was resumed by {event.get('actor')}.",
        "promoted": f"{who} is being promoted to every server.",
        "completed": f"{who} is live on every server (was {dep.get('previous_version')}).",
        "rollback_started": f"{who} is being rolled back; the canary's share is set to 0 first.",
        "rolled_back": f"{who} was rolled back: {dep.get('previous_version')} runs on every server again.",
        "failed": f"{who}: the rollback could not finish; canaryd keeps trying. A person should look.",
    }
    text = texts.get(str(event["kind"]), f"{who}: {event['kind']}.")
    reasons = "; ".join(str(r) for r in event.get("reasons") or [])
    return f"{text} {_escape(reasons)}".strip() if reasons else text


ICONS = {
    "completed": ":white_check_mark:",
    "rollback_started": ":rotating_light:",
    "rolled_back": ":leftwards_arrow_with_hook:",
    "failed": ":x:",
    "paused": ":double_vertical_bar:",
    "waiting_for_approval": ":raised_hand:",
    "stage_advanced": ":arrow_forward:",
}


def slack_message(data: Mapping[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook message: `text` (the notification's fallback) and Block Kit blocks."""
    event, dep = data["event"], data["deployment"]
    text = f"{ICONS.get(str(event['kind']), ':bird:')} {sentence(data)}"[:SLACK_TEXT_MAX]
    context = (
        f"deployment {dep['id']} · {event['kind']} · {dep.get('canary_status')} · "
        f"canary {_share(dep.get('current_traffic_percentage'))} · by {_escape(str(event.get('actor')))} · "
        f"{event['at']}"
    )
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context[:SLACK_TEXT_MAX]}]},
        ],
    }
