"""The log of a real rollout (`canaryd serve` as a process, CANARYD_LOG_FORMAT=json): every line is one JSON
object, and each decision of the rollout is there once, with its deployment and application ids."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from canaryd.observability import CHATTY_LOGGERS, configure_logging
from tests.fixtures.stack import LoadGenerator

from .conftest import ServedStack

#: The threshold judge decides on min_requests: no inconclusive stage pausing the rollout on a busy machine.
FAST = {
    "stages": [10, 50, 100],
    "stage_duration": 2,
    "health_check_interval": 1,
    "min_requests": 10,
    "judge": "threshold",
    # p95 of a few dozen requests on a loaded test machine is noise; the bad canary fails on errors.
    "latency_min_difference_ms": 5000,
}


def parse(lines: list[str]) -> list[dict[str, Any]]:
    entries = []
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except ValueError:
            pytest.fail(f"log line {number} is not JSON: {line[:300]}")
        assert isinstance(entry, dict) and {"time", "level", "logger", "message"} <= entry.keys(), line
        entries.append(entry)
    return entries


async def test_json_log_of_a_rollout_has_every_decision(served: ServedStack) -> None:
    s = served.stack
    app = await s.register("v1")
    load = LoadGenerator(s.proxy_url, rate=60).start()
    good = (await s.deploy("v2", FAST)).json()
    await s.wait(good["id"])
    bad = (await s.deploy("v3-bad", FAST)).json()
    await s.wait(bad["id"], until={"monitoring"})
    r = await s.api.post(f"/deployments/{bad['id']}/pause")
    assert r.status_code == 202, r.text
    r = await s.api.post(f"/deployments/{bad['id']}/rollback", json={"reason": "pager"})
    assert r.status_code == 202, r.text
    await s.wait(bad["id"])
    await load.stop()

    entries = parse(served.log_lines())
    decisions = [e for e in entries if "decision" in e]
    for e in decisions:
        assert e["level"] == "INFO" and e["application_id"] == app["id"], e
        assert e["deployment_id"] in (good["id"], bad["id"]), e

    def kinds(dep_id: int) -> list[str]:
        return [e["decision"] for e in decisions if e["deployment_id"] == dep_id]

    events = [e["kind"] for e in await s.events(good["id"]) if e["kind"] != "health_check"]
    assert kinds(good["id"]) == events
    assert kinds(good["id"])[0] == "deployment_created" and kinds(good["id"])[-1] == "completed"
    started = next(e for e in decisions if e["decision"] == "deploy_started")
    assert started["canary_share"] == 0.0, "the canary gets no traffic while it is being deployed"
    advances = [
        e for e in decisions if e["deployment_id"] == good["id"] and e["decision"] == "stage_advanced"
    ]
    assert [e["stage"] for e in advances] == [1, 2, 3]
    assert [e["canary_share"] for e in advances][1:] == [50.0, 100.0]
    assert all("requests" in e["evidence"]["canary"] for e in advances[1:]), advances
    by_operator = {e["decision"]: e for e in decisions if e["deployment_id"] == bad["id"]}
    assert by_operator["paused"]["actor"] == "token:bootstrap"
    rollback = by_operator["rollback_started"]
    assert rollback["actor"] == "token:bootstrap" and rollback["rollback_reason"] == "operator"
    assert "pager" in " ".join(rollback["reasons"])
    assert by_operator["rolled_back"]["from_state"] == "rolling_back"
    # Library chatter stays out at INFO: no httpx probe lines, no transitions internals, no access log.
    noisy = [e for e in entries if e["logger"].split(".")[0] in ("httpx", "transitions", "arq", "asyncssh")]
    assert noisy == [] and not [e for e in entries if e["logger"] == "uvicorn.access"]
    assert len(entries) < 4 * len(decisions) + 20, f"{len(entries)} lines for {len(decisions)} decisions"


def test_debug_level_lets_library_lines_through() -> None:
    """CANARYD_LOG_LEVEL=DEBUG: the chatty libraries are no longer held at WARNING."""
    try:
        configure_logging("DEBUG", "json")
        assert logging.getLogger("httpx").getEffectiveLevel() == logging.DEBUG
        configure_logging("INFO", "text")
        assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING
        assert logging.getLogger("canaryd.decisions").isEnabledFor(logging.INFO)
    finally:
        logging.getLogger().handlers.clear()
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
