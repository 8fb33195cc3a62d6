"""canaryctl, the CI client, as a real subprocess against a real canaryd (embedded mode, real nginx)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from tests.fixtures.stack import TOKEN, LoadGenerator, Stack

CANARYCTL = Path(os.environ.get("VIRTUAL_ENV", ".venv")) / "bin" / "canaryctl"


async def canaryctl(s: Stack, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(CANARYCTL if CANARYCTL.exists() else Path(".venv/bin/canaryctl")),
        *args,
        env={**os.environ, "CANARYD_URL": s.base, "CANARYD_TOKEN": TOKEN},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_ci_pipeline_gates_on_the_outcome(embedded_stack: Stack, tmp_path: Path) -> None:
    """`canaryctl deploy --wait` exits 0 for a completed canary and 1 for one that was rolled back; the
    first rollout runs on the application's default settings alone, set with `canaryctl app update`."""
    s = embedded_stack
    app = await s.register("v1")
    load = LoadGenerator(s.proxy_url, rate=60).start()
    # Only requests over 1 s count as slow: on a loaded machine a few hundred requests' tail is noise, and a
    # canary held for evidence would pause instead of ending (the judge's latency is tested in test_judge_e2e).
    defaults = {"stages": [10, 50, 100], "stage_duration": 2, "health_check_interval": 1}
    defaults |= {"min_requests": 10, "latency_tail_ms": 1000}
    (tmp_path / "defaults.json").write_text(json.dumps(defaults))
    code, out = await canaryctl(
        s, "app", "update", "shop", "--defaults-file", str(tmp_path / "defaults.json")
    )
    assert code == 0 and "stage_duration: 2" in out, out
    wait = ["--interval", "0.2", "--timeout", "120"]
    code, out = await canaryctl(s, "deploy", "shop", "v2", *wait)  # no settings of its own
    assert code == 0, out
    assert "completed" in out and "monitoring" in out
    code, out = await canaryctl(s, "status", "1", "--json")
    status = json.loads(out)
    assert status["config"]["stages"] == [10, 50, 100] and status["config"]["stage_duration"] == 2
    assert (
        status["config_sources"]["stages"] == "application" and status["config_sources"]["judge"] == "default"
    )
    # A deployment's own settings override the defaults field by field.
    config = json.dumps({"health_check_interval": 1, "min_requests": 10, "latency_tail_ms": 1000})
    common = [*("--stages", "10,50,100", "--stage-duration", "2", "--config-json", config), *wait]
    code, out = await canaryctl(s, "deploy", str(app["id"]), "v3-bad", *common, "--idempotency-key", "ci-42")
    await load.stop()
    assert code == 1, out
    assert "rolled_back" in out and "error_rate" in out
    code, events = await canaryctl(s, "events", "2")
    assert code == 0 and "rollback_started" in events and "rolled_back" in events
    code, out = await canaryctl(s, "pause", "2")
    assert code == 4 and "cannot pause" in out  # 4: canaryd refused the request
