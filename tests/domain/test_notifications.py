"""The pure part of notifications: subscribable kinds, payloads, Slack messages, signatures, backoff."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from tests.fixtures.receiver import slack_problems

from canaryd.domain.notifications import (
    SUBSCRIBABLE,
    backoff,
    body,
    kind_problems,
    payload,
    sentence,
    signature,
    slack_message,
    subscribed,
)
from canaryd.domain.plan import EventKind

EVENT = {
    "id": 40,
    "deployment_id": 7,
    "seq": 9,
    "at": "2026-11-29T18:07:00+00:00",
    "kind": "rollback_started",
    "from_state": "monitoring",
    "to_state": "rolling_back",
    "stage": 2,
    "traffic_percentage": 25.0,
    "metrics": {"big": "not copied"},
    "reasons": ["error_rate: canary 5/10 <worse> & more"],
    "actor": "canaryd",
}
STATUS = {
    "version": "v2",
    "previous_version": "v1",
    "status": "in_progress",
    "canary_status": "rolling_back",
    "current_stage": 2,
    "total_stages": 4,
    "current_traffic_percentage": 25.0,
    "target_traffic_percentage": 0.0,
    "waiting_for": None,
    "reasons": ["error_rate"],
    "canary_servers": [{"id": 1}],
}


def data(**event: Any) -> dict[str, Any]:
    return payload("key-1", {**EVENT, **event}, {"id": 3, "name": "shop"}, STATUS)


def test_every_issue_kind_is_subscribable_but_health_checks_are_not() -> None:
    """The kinds the issue names can be subscribed to; the per-interval health check cannot, not even by *."""
    for kind in ("stage_advanced", "paused", "waiting_for_approval", "rollback_started", "rolled_back"):
        assert kind in SUBSCRIBABLE
    assert {"completed", "failed"} <= set(SUBSCRIBABLE)
    assert EventKind.HEALTH_CHECK.value not in SUBSCRIBABLE
    assert subscribed(["*"], "completed") and not subscribed(["*"], "health_check")
    assert subscribed(["completed"], "completed") and not subscribed(["completed"], "failed")


def test_kind_problems_names_each_unknown_entry() -> None:
    """Every unknown kind is reported with its index; '*' and known kinds are fine."""
    assert kind_problems(["*", "completed"]) == []
    problems = kind_problems(["completed", "finished", "health_check"])
    assert [i for i, _ in problems] == [1, 2]
    assert "unknown event kind 'finished'" in problems[0][1]


def test_payload_carries_event_application_and_compact_status() -> None:
    """The json format: what happened, to which application, and the deployment's state then."""
    d = data()
    assert d["delivery"] == "key-1"
    assert d["event"]["kind"] == "rollback_started" and d["event"]["reasons"] == EVENT["reasons"]
    assert "metrics" not in d["event"], "no metric snapshots: a payload stays small"
    assert d["application"] == {"id": 3, "name": "shop"}
    assert d["deployment"]["id"] == 7 and d["deployment"]["version"] == "v2"
    assert d["deployment"]["target_traffic_percentage"] == 0.0
    assert "canary_servers" not in d["deployment"]


def test_body_is_canonical_and_signature_is_hmac_sha256_of_it() -> None:
    """The same payload always renders to the same bytes; the header is sha256=<hex HMAC>."""
    d = data()
    assert body("json", d) == body("json", json.loads(body("json", d)))
    content = body("json", d)
    expected = hmac.new(b"s3cret-s3cret-s3cret", content, hashlib.sha256).hexdigest()
    assert signature("s3cret-s3cret-s3cret", content) == f"sha256={expected}"


@pytest.mark.parametrize("kind", [k for k in SUBSCRIBABLE])
def test_slack_message_has_slacks_shape_for_every_kind(kind: str) -> None:
    """Every subscribable kind renders to a message Slack's incoming webhooks accept, in one sentence."""
    message = json.loads(body("slack", data(kind=kind)))
    assert slack_problems(message) == []
    assert "*shop* v2" in message["text"]


@pytest.mark.parametrize(
    ("kind", "event", "words"),
    [
        (
            "stage_advanced",
            {"stage": 3, "traffic_percentage": 50.0},
            "stage 3 of 4, the canary now gets 50 %",
        ),
        ("completed", {}, "is live on every server (was v1)"),
        ("rolled_back", {}, "v1 runs on every server again"),
        ("paused", {"actor": "token:oncall"}, "paused by token:oncall at 25 %"),
        ("failed", {}, "the rollback could not finish"),
    ],
)
def test_sentence_says_what_happened(kind: str, event: dict[str, Any], words: str) -> None:
    """The human sentence for the notable kinds."""
    assert words in sentence(data(kind=kind, **event))


def test_slack_text_escapes_mrkdwn_control_characters() -> None:
    """Reasons with <, > and & cannot turn into links or mentions."""
    text = slack_message(data())["text"]
    assert "&lt;worse&gt; &amp; more" in text and "<worse>" not in text


def test_waiting_for_approval_names_the_gate() -> None:
    """The waiting sentence names the stage and share it waits for."""
    d = payload(
        "k",
        {**EVENT, "kind": "waiting_for_approval"},
        {"id": 3, "name": "shop"},
        {**STATUS, "waiting_for": {"stage": 3, "percentage": 50.0}},
    )
    assert "waiting for approval before stage 3 (50 %)" in sentence(d)


@pytest.mark.parametrize(
    ("attempts", "retry_after", "expected"),
    [
        (1, None, 2.0),
        (2, None, 4.0),
        (5, None, 32.0),
        (9, None, 512.0),
        (10, None, 600.0),
        (40, None, 600.0),
        (1, 30.0, 30.0),  # a longer Retry-After is honoured
        (5, 10.0, 32.0),  # a shorter one is not
        (1, 9999.0, 600.0),  # and never beyond the cap
    ],
)
def test_backoff_doubles_up_to_the_cap(attempts: int, retry_after: float | None, expected: float) -> None:
    """Defaults (2 s base, 600 s cap): 2, 4, 8, … 512, 600, 600."""
    assert backoff(attempts, 2.0, 600.0, retry_after) == expected
