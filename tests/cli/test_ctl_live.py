"""canaryctl as a real subprocess against a real canaryd (embedded, real nginx and sample apps): one exit
code per outcome, WebSocket following, lists, names, JSON output, and the live view."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from tests.fixtures.nginx import free_port
from tests.fixtures.stack import APPCTL, TOKEN, LoadGenerator, Stack
from typer.testing import CliRunner

from canaryd.cli.ctl import Runtime, app

CANARYCTL = Path(sys.executable).parent / "canaryctl"
FAST = {
    "stages": [10, 50, 100],
    "stage_duration": 2,
    "health_check_interval": 1,
    "min_requests": 10,
    "judge": "threshold",  # decides on min_requests: no inconclusive pause on a busy machine
    # p95 of a few dozen requests on a loaded test machine is noise; the bad canary fails on errors.
    "latency_min_difference_ms": 5000,
}
SLOW = {**FAST, "stage_duration": 600}


async def canaryctl(s: Stack, *args: str, url: str | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(CANARYCTL),
        *args,
        env={**os.environ, "CANARYD_URL": url or s.base, "CANARYD_TOKEN": TOKEN},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_exit_codes_for_each_outcome(small_stack: Stack) -> None:
    """0 completed, 1 rolled back, 2 usage or unreachable, 4 refused by canaryd, 5 timed out; following is
    done over the WebSocket (no polling fallback) with plain lines when stdout is not a terminal."""
    s = small_stack
    await s.register("v1")
    load = LoadGenerator(s.proxy_url, rate=60).start()
    fast = ["--config-json", json.dumps(FAST)]

    code, out, err = await canaryctl(s, "deploy", "shop", "v2", *fast, "--idempotency-key", "ci-1")
    assert code == 0, out + err
    assert "polling" not in err, err
    lines = out.splitlines()
    assert lines[0] == "deployment 1 of v2 created: pending"
    assert any("stage_advanced" in line and "50%" in line for line in lines), out
    assert any("deploy_started" in line and "  0%" in line for line in lines), out
    assert lines[-1] == "deployment 1 completed"

    code, out, err = await canaryctl(s, "deploy", "shop", "v2", *fast, "--idempotency-key", "ci-1")
    assert code == 0, out + err
    assert out.splitlines()[0].endswith(
        "already exists for this Idempotency-Key (nothing new started): completed"
    )

    code, out, err = await canaryctl(s, "deploy", str(s.app["id"]), "v3-bad", *fast)
    assert code == 1, out + err
    assert "rollback_started" in out and "error_rate" in out
    assert out.splitlines()[-1] == "deployment 2 rolled_back"

    code, out, err = await canaryctl(
        s, "deploy", "shop", "v4", "--config-json", json.dumps(SLOW), "--no-wait"
    )
    assert code == 0, out + err
    code, out, err = await canaryctl(s, "watch", "3", "--timeout", "1")
    assert code == 5, out + err
    assert "did not finish within 1 s" in err
    code, out, err = await canaryctl(s, "deploy", "shop", "v5", "--no-wait")
    assert code == 4 and "already has an active deployment" in err, out + err
    code, out, err = await canaryctl(s, "rollback", "3", "--reason", "test over")
    assert code == 0, out + err
    await s.wait(3)
    await load.stop()

    code, out, err = await canaryctl(s, "deploy", "no-such-app", "v9")
    assert code == 4 and "no application named 'no-such-app'" in err
    code, out, err = await canaryctl(s, "deploy", "shop", "v9", "--stages", "10,lots")
    assert code == 2 and "'lots' is not a number" in err
    code, out, err = await canaryctl(s, "list", "widgets")
    assert code == 2
    code, out, err = await canaryctl(s, "status", "1", url=f"http://127.0.0.1:{free_port()}")
    assert code == 2 and "cannot reach canaryd" in err


async def test_failed_deployment_exits_3(small_stack: Stack) -> None:
    """A rollback that cannot restore the previous version ends `failed`: exit 3."""
    s = small_stack
    await s.register("v1")
    # The deploy command refuses v1, so restoring it after the rollback fails every time.
    py = sys.executable
    command = (
        f"test {{version}} != v1 && CONTRACT_STATE={s.state_dir} {py} {APPCTL} start "
        "--host {host} --port {port} --version {version}"
    )
    r = await s.api.post("/applications/1/deployments", json={"version": "v2", "config": SLOW})
    dep = r.json()
    await s.wait(dep["id"], until={"monitoring"})
    await _set_deploy_command(s, command)
    assert (await s.api.post(f"/deployments/{dep['id']}/rollback")).status_code == 202
    code, out, err = await canaryctl(s, "watch", str(dep["id"]), "--timeout", "60")
    assert code == 3, out + err
    assert out.splitlines()[-1] == f"deployment {dep['id']} failed"


async def _set_deploy_command(s: Stack, command: str) -> None:
    """Changes the application's deploy command in the database (there is no API for it in this branch)."""
    from canaryd.db.engine import make_engine, make_sessionmaker, unit_of_work
    from canaryd.db.models import Application

    engine = make_engine(s.settings.database_url)
    try:
        async with unit_of_work(make_sessionmaker(engine)) as session:
            app = await session.get(Application, s.app["id"])
            assert app is not None
            app.deploy_command = command
    finally:
        await engine.dispose()


async def test_lists_json_and_live_view(small_stack: Stack) -> None:
    s = small_stack
    await s.register("v1")
    load = LoadGenerator(s.proxy_url, rate=60).start()
    code, out, err = await canaryctl(s, "list", "applications")
    assert code == 0 and out.split()[:3] == [str(s.app["id"]), "shop", "v1"], out + err
    code, out, err = await canaryctl(s, "--output", "json", "list", "servers")
    assert code == 0 and [x["name"] for x in json.loads(out)] == ["s0", "s1", "s2", "proxy"]

    code, out, err = await canaryctl(
        s, "deploy", "shop", "v2", "--config-json", json.dumps(SLOW), "--no-wait"
    )
    assert code == 0, out + err
    await s.wait(1, until={"monitoring"})
    await asyncio.sleep(2.5)  # a few checks with traffic figures

    # The live view, as on a terminal: in-process (a thread, so the server's event loop keeps running).
    runtime = Runtime(interactive=True)
    env = {"CANARYD_URL": s.base, "CANARYD_TOKEN": TOKEN}
    watching = asyncio.create_task(
        asyncio.to_thread(CliRunner().invoke, app, ["watch", "1", "--timeout", "30"], obj=runtime, env=env)
    )
    await asyncio.sleep(2.5)
    assert (await s.api.post("/deployments/1/promote")).status_code == 202
    result = await watching
    assert result.exit_code == 0, result.output
    screen = result.stdout
    assert "\x1b[" in screen and "F\x1b[J" in screen, "the view is redrawn in place"
    assert "split: canary 10 % (target 10 %)" in screen
    canary_rows = [line for line in screen.splitlines() if line.strip().startswith("canary ")]
    assert canary_rows and any(int(row.split()[1]) > 0 for row in canary_rows), screen
    assert "verdict   pass" in screen or "verdict   inconclusive" in screen
    assert screen.rstrip().endswith("deployment 1 completed")

    code, out, err = await canaryctl(s, "-o", "json", "watch", "1")
    assert code == 0
    messages = [json.loads(line) for line in out.splitlines()]
    assert {m["type"] for m in messages} == {"status", "event"}
    seqs = [m["seq"] for m in messages if m["type"] == "event"]
    assert seqs == list(range(1, len(seqs) + 1)), "every event once, in order"
    assert messages[-1]["type"] == "status" and messages[-1]["canary_status"] == "completed"
    code, out, err = await canaryctl(
        s, "list", "deployments", "--application", "shop", "--status", "completed"
    )
    assert code == 0 and out.split()[0] == "1" and "v1 → v2" in out
    await load.stop()
