"""Default deployment settings kept per application, through the real API on both databases: set at
registration and by PATCH (422 listing every problem with its path), merged field by field under a
deployment's own settings, validated as a whole with each problem located where it came from, shown in the
status with their sources, and never changing a deployment already started."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.api.test_validation import app_body, locs, messages
from tests.fixtures.stack import Stack, make_stack

PROMETHEUS = {"url": "http://127.0.0.1:9/", "timeout": 2}
DEFAULTS = {
    "stages": [20, 60, 100],
    "stage_duration": 600,
    "health_check_interval": 1,
    "judge": "threshold",
    "metrics_source": "prometheus",
    "prometheus": PROMETHEUS,
}


@pytest.fixture
async def stack(tmp_path: Path, database_url: str) -> AsyncIterator[Stack]:
    """canaryd in embedded mode on SQLite or PostgreSQL, with nginx and three servers."""
    async with make_stack(tmp_path, database_url, servers=3) as s:
        yield s


async def test_defaults_are_validated_merged_and_kept_apart_from_running_deployments(stack: Stack) -> None:
    """Bad defaults get one 422 with every problem's path; good ones are merged under a deployment's own
    settings; a merged whole that breaks a rule says which values came from the application; changing the
    defaults leaves a running deployment's settings alone."""
    s = stack
    app = await s.register("v1")
    app_id = app["id"]
    assert app["deployment_defaults"] == {}

    bad = {"stages": [0, 150], "health_check_interval": 0, "colour": "red", "judge": "magic"}
    r = await s.api.patch(f"/applications/{app_id}", json={"deployment_defaults": bad})
    assert r.status_code == 422, r.text
    where = locs(r)
    for field in ("stages", "health_check_interval", "colour", "judge"):
        assert ["body", "deployment_defaults", field] in where, where
    r = await s.api.patch(
        f"/applications/{app_id}",
        json={"deployment_defaults": {"stage_duration": 5, "health_check_interval": 9}},
    )
    assert r.status_code == 422 and messages(r) == [
        "health_check_interval must not be longer than stage_duration"
    ], r.text
    assert (await s.api.get(f"/applications/{app_id}")).json()["deployment_defaults"] == {}, "nothing applied"

    r = await s.api.patch(f"/applications/{app_id}", json={"deployment_defaults": DEFAULTS})
    assert r.status_code == 200, r.text
    stored = r.json()["deployment_defaults"]
    assert stored["stages"] == [20, 60, 100] and stored["prometheus"]["url"] == PROMETHEUS["url"]
    assert set(stored) == set(DEFAULTS), "only the fields given are kept"

    # approve_before [60] is valid only with the application's stages; prometheus is replaced whole.
    own = {"approve_before": [60], "metrics_source": "proxy", "prometheus": {"url": "http://127.0.0.1:8/"}}
    r = await s.deploy("v2", own)
    assert r.status_code == 201, r.text
    dep = r.json()
    assert dep["config"]["stages"] == [20, 60, 100] and dep["config"]["approve_before"] == [60]
    prometheus = dep["config"]["prometheus"]
    assert prometheus["url"] == "http://127.0.0.1:8/" and prometheus["timeout"] == 5, "replaced whole"
    sources = dep["config_sources"]
    assert sources["stages"] == sources["stage_duration"] == sources["judge"] == "application"
    assert sources["approve_before"] == sources["prometheus"] == "deployment"
    assert sources["alpha"] == "default" and set(sources) == set(dep["config"])

    # Changing the defaults now leaves the running deployment's settings as they were.
    r = await s.api.patch(f"/applications/{app_id}", json={"deployment_defaults": {"stages": [50, 100]}})
    assert r.status_code == 200, r.text
    after = await s.status(dep["id"])
    assert after["config"] == dep["config"] and after["config_sources"] == sources
    assert (await s.api.post(f"/deployments/{dep['id']}/rollback")).status_code == 202
    await s.wait(dep["id"], timeout=60)

    # A merged whole that breaks a rule: every problem, each where its value came from.
    await s.api.patch(f"/applications/{app_id}", json={"deployment_defaults": {"stages": [0.001, 100]}})
    r = await s.deploy("v2", {"stage_duration": 5, "health_check_interval": 9, "approve_before": [60]})
    assert r.status_code == 422, r.text
    problems = {tuple(p["loc"]): p["msg"] for p in r.json()["detail"]}
    assert ("body", "config") in problems, problems
    assert "stages from the application's deployment_defaults" in " ".join(problems.values()), problems
    r = await s.deploy("v2", {"stage_duration": 5, "health_check_interval": 1})
    assert r.status_code == 422, r.text
    assert locs(r) == [["application", "deployment_defaults", "stages", 0]], r.text
    assert (await s.api.get(f"/applications/{app_id}/deployments")).json()[0]["id"] == dep["id"]


async def test_defaults_at_registration_and_the_deprecated_dry_run(stack: Stack) -> None:
    """Defaults given at registration are checked with the rest of the body; `dry_run: true` is read as
    `analysis: observe` (in defaults and in a deployment) and the history says it is deprecated."""
    s = stack
    app = await s.register("v1")
    body = app_body(s, port=0, deployment_defaults={"stage_duration": 0, "dry_run": "yes"})
    r = await s.api.post("/applications", json=body)
    assert r.status_code == 422, r.text
    assert {("body", "port"), ("body", "deployment_defaults", "analysis")} <= {tuple(x) for x in locs(r)}, (
        r.text
    )

    body["port"] = s.app_port
    body["proxy"] |= {"config_path": f"{Path(s.nginx.config_path).parent}/shop2.conf", "listen": None}
    body["deployment_defaults"] = {"stages": [50, 100], "stage_duration": 30}
    r = await s.api.post("/applications", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["deployment_defaults"] == {"stages": [50, 100], "stage_duration": 30}

    r = await s.api.patch(f"/applications/{app['id']}", json={"deployment_defaults": {"dry_run": True}})
    assert r.status_code == 200 and r.json()["deployment_defaults"] == {"analysis": "observe"}, r.text
    r = await s.deploy("v2", {"dry_run": False, "analysis": "observe"})
    assert r.status_code == 422 and "give only analysis" in messages(r)[0], r.text
    r = await s.deploy("v2", {"dry_run": False, "stage_duration": 600, "health_check_interval": 1})
    assert r.status_code == 201, r.text
    dep = r.json()
    assert dep["config"]["analysis"] == "enforce" and "dry_run" not in dep["config"]
    assert dep["config_sources"]["analysis"] == "deployment"
    created = (await s.events(dep["id"]))[0]
    assert any("dry_run is deprecated" in reason for reason in created["reasons"]), created
    assert (await s.api.post(f"/deployments/{dep['id']}/rollback")).status_code == 202
    await s.wait(dep["id"], timeout=60)
    registered: dict[str, Any] = (await s.api.get(f"/applications/{app['id']}")).json()
    assert registered["deployment_defaults"] == {"analysis": "observe"}
