"""The example CI jobs under deploy/ci: valid for their CI system's schema, and their script lines, run as the
CI system would run them (with its variables filled in), drive a canary through a live canaryd with canaryctl.

Only what a real pipeline sets is changed: the job's canary settings are swapped for fast ones (a production
canaryd holds each stage at least 60 s), and canaryctl comes from this checkout instead of the image."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.deploy.schemas import REPO, check_schema
from tests.fixtures.stack import LoadGenerator, Stack, make_stack

CI = REPO / "deploy" / "ci"
# The threshold judge decides on 10 requests a side; the sequential one (the default) needs hundreds.
FAST = {
    "stages": [25, 100],
    "stage_duration": 1,
    "health_check_interval": 1,
    "min_requests": 10,
    "judge": "threshold",
    # The pipeline is tested, not the verdict: latency differences under 5 s never fail these canaries on
    # a machine the rest of the suite loads (a 57 ms p95 against 4 ms once rolled the good one back).
    "latency_min_difference_ms": 5000,
}
GITHUB_EXPRESSION = re.compile(r"\$\{\{\s*([^}]*?)\s*\}\}")


def load(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CI / name).read_text())
    return loaded


def base_env() -> dict[str, str]:
    """A runner's environment: nothing of canaryd's, canaryctl on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANARYD_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


async def deploy_token(stack: Stack) -> str:
    """A `deploy`-scope token, as the examples tell the operator to make for CI."""
    r = await stack.api.post("/tokens", json={"name": "ci", "scope": "deploy"})
    assert r.status_code == 201, r.text
    token: str = r.json()["token"]
    return token


async def run_script(shell: list[str], script: str, env: dict[str, str], stack: Stack) -> tuple[int, str]:
    """Runs the job's script while users keep requesting the application through nginx."""
    traffic = LoadGenerator(stack.proxy_url, rate=40).start()
    try:
        proc = await asyncio.create_subprocess_exec(
            *shell, script, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
        except TimeoutError:
            proc.kill()
            out, _ = await proc.communicate()
            deployments = (await stack.api.get(f"/applications/{stack.app['id']}/deployments")).text
            pytest.fail(f"the job's script did not finish in 120 s:\n{out.decode()}\n{deployments[-3000:]}")
    finally:
        await traffic.stop()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def test_examples_follow_their_ci_schemas() -> None:
    for builtin, name in (("github-workflows", "github-actions.yml"), ("gitlab-ci", "gitlab-ci.yml")):
        result = check_schema(builtin, CI / name)
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"


def github_env(values: dict[str, str], context: dict[str, str]) -> dict[str, str]:
    """The job's env with its ${{ ... }} expressions evaluated from `context`; an unknown one fails."""

    def evaluate(match: re.Match[str]) -> str:
        expression = match.group(1)
        if expression not in context:
            pytest.fail(f"the workflow uses ${{{{ {expression} }}}}, which this test does not provide")
        return context[expression]

    return {name: GITHUB_EXPRESSION.sub(evaluate, str(value)) for name, value in values.items()}


async def test_github_actions_job_runs_a_canary(tmp_path: Path, sqlite_url: str) -> None:
    job = load("github-actions.yml")["jobs"]["canary"]
    steps = [step["run"] for step in job["steps"] if "run" in step]
    assert steps and all(not GITHUB_EXPRESSION.search(run) for run in steps), "expressions belong in env:"
    assert any("canaryctl deploy" in run and "--wait" in run for run in steps)
    async with make_stack(tmp_path, sqlite_url, servers=3) as stack:
        app = await stack.register("v1")
        context = {
            "vars.CANARYD_URL": stack.base,
            "vars.CANARYD_APP_ID": str(app["id"]),
            "secrets.CANARYD_TOKEN": await deploy_token(stack),
            "github.sha": "v2",
            "github.run_id": "4242",
        }
        env = base_env() | github_env(job["env"], context) | {"CANARY_CONFIG": json.dumps(FAST)}
        for run in steps:  # GitHub's `shell: bash` on Linux
            code, out = await run_script(
                ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c"], run, env, stack
            )
            assert code == 0, out
        assert "completed" in out
        assert await stack.fleet_versions() == ["v2"] * 3


async def test_gitlab_job_runs_a_canary_and_fails_on_a_rollback(tmp_path: Path, sqlite_url: str) -> None:
    pipeline = load("gitlab-ci.yml")
    job = pipeline["canary"]
    assert job["image"]["entrypoint"] == [""], "the image's entrypoint (canaryd) must be cleared"
    script = "\n".join(job["script"])
    assert "canaryctl deploy" in script and "--wait" in script
    async with make_stack(tmp_path, sqlite_url, servers=3) as stack:
        app = await stack.register("v1")
        settings = {  # the project's CI/CD variables
            "CANARYD_URL": stack.base,
            "CANARYD_APP_ID": str(app["id"]),
            "CANARYD_TOKEN": await deploy_token(stack),
        }
        env = base_env() | settings | {str(k): str(v) for k, v in job.get("variables", {}).items()}
        env["CANARY_CONFIG"] = json.dumps(FAST)

        good = env | {"CI_COMMIT_SHA": "v2", "CI_PIPELINE_ID": "101"}
        code, out = await run_script(["sh", "-e", "-c"], script, good, stack)  # the image's /bin/sh
        assert code == 0, out
        assert await stack.fleet_versions() == ["v2"] * 3

        bad = env | {"CI_COMMIT_SHA": "v3-bad", "CI_PIPELINE_ID": "102"}
        code, out = await run_script(["sh", "-e", "-c"], script, bad, stack)
        assert code == 1, out  # the job fails: canaryd rolled the canary back
        assert "rolled_back" in out or "rolled back" in out, out
        assert await stack.fleet_versions() == ["v2"] * 3
