"""422s of strategy `rolling`: every problem in one answer, whether the body fails its schema or only the
application and the merged settings can tell; and what a valid request starts with."""

from __future__ import annotations

from tests.fixtures.stack import Stack

from .test_validation import locs, messages


async def test_every_problem_of_a_rolling_request_in_one_answer(embedded_stack: Stack) -> None:
    """Schema problems of the rolling block and the settings a rolling update refuses, all at once."""
    s = embedded_stack
    await s.register("v1")
    config = {
        "rolling": {"batch_size": 0, "batch_percent": 100},
        "stages": [10, 100],
        "canary_server_percentage": 30,
        "stage_duration": 0,
    }
    r = await s.deploy("v2", config, strategy="rolling")
    assert r.status_code == 422, r.text
    text = "\n".join(messages(r))
    for words in (
        "greater than or equal to 1",
        "less than 100",
        "stages are the canary's percentages; a rolling update's stages are its batches",
        "canary_server_percentage sizes the canary",
        "stage_duration must be at least 1 seconds",
    ):
        assert words in text, (words, text)
    r = await s.deploy(
        "v2",
        {"rolling": {"batch_size": 1, "batch_percent": 10}, "approve_before": [50], "stage_duration": 5},
        strategy="rolling",
    )
    assert r.status_code == 422, r.text
    text = "\n".join(messages(r))
    assert (
        "batch_size or batch_percent, not both" in text and "approve_before names canary percentages" in text
    )
    assert (await s.api.get("/deployments")).json() == []


async def test_what_only_the_application_can_tell(embedded_stack: Stack) -> None:
    """5 servers cannot be upgraded 5 at a time without an outage; rolling settings with a canary are
    refused."""
    s = embedded_stack
    await s.register("v1")
    r = await s.deploy("v2", {"rolling": {"batch_size": 5}, "stage_duration": 10}, strategy="rolling")
    assert r.status_code == 422, r.text
    assert messages(r) == [
        "rolling.batch_size 5 would drain every server of the application (it has 5) at once: at most 4"
    ]
    assert locs(r) == [["body", "config", "rolling"]]
    r = await s.deploy("v2", {"rolling": {"batch_size": 1}, "stage_duration": 10}, strategy="canary")
    assert r.status_code == 422, r.text
    assert messages(r) == ["rolling settings apply to strategy rolling only, not canary"]


async def test_a_valid_rolling_update_has_one_stage_per_batch(embedded_stack: Stack) -> None:
    """Accepted: the stages are the upgraded servers' cumulative share, one per batch (the default batch is
    25 % of the servers, rounded down, at least 1)."""
    s = embedded_stack
    await s.register("v1")
    r = await s.deploy("v2", {"rolling": {"batch_size": 2}, "stage_duration": 3600}, strategy="rolling")
    assert r.status_code == 201, r.text
    st = r.json()
    assert st["strategy"] == "rolling" and st["total_stages"] == 3
    assert st["config"]["stages"] == [40.0, 80.0, 100.0]
    assert st["config"]["rolling"] == {"batch_size": 2, "batch_percent": None}
    assert (await s.api.post(f"/deployments/{st['id']}/rollback", json={})).status_code == 202
    await s.wait(st["id"])
    r = await s.deploy("v2", {"stage_duration": 3600}, strategy="rolling")
    assert r.status_code == 201, r.text
    assert r.json()["config"]["stages"] == [20.0, 40.0, 60.0, 80.0, 100.0]
    assert r.json()["config"]["rolling"] == {"batch_size": None, "batch_percent": None}


async def test_openapi_documents_the_rolling_settings(embedded_stack: Stack) -> None:
    s = embedded_stack
    doc = (await s.api.get(f"{s.base}/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    assert "config.rolling.batch_size" in schemas["DeploymentCreate"]["properties"]["strategy"]["description"]
    assert set(schemas["RollingSettings"]["properties"]) == {"batch_size", "batch_percent"}
    assert "Strategy rolling only" in str(schemas["CanaryConfigOverrides"]["properties"]["rolling"])
