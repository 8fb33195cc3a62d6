"""canaryctl against a scripted server (`httpx.MockTransport`) that records every request.

These tests pin canaryctl to our own HTTP contract (DESIGN.md, "The HTTP contract") as the client sees it:
paths, bodies, headers, exit codes and what is printed. The WebSocket opener refuses, so following falls
back to polling here; tests/cli/test_ctl_live.py runs canaryctl against a real canaryd, WebSocket included.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from canaryd.cli.ctl import Runtime, app

BASE = "http://canaryd.test:8080"
TOKEN = "s3cret-token"


def status_object(canary_status: str, stage: int = 0, traffic: int = 0, **extra: Any) -> dict[str, Any]:
    """A status object with every field of the contract."""
    obj: dict[str, Any] = {
        "id": 42,
        "application_id": 7,
        "version": "v2",
        "strategy": "canary",
        "status": canary_status,
        "canary_status": canary_status,
        "current_stage": stage,
        "total_stages": 3,
        "current_traffic_percentage": traffic,
        "target_traffic_percentage": traffic,
        "canary_servers": [{"id": 1, "name": "web-1"}],
        "stable_servers": [{"id": 2, "name": "web-2"}, {"id": 3, "name": "web-3"}],
        "metrics": {},
        "stage_started_at": None,
        "next_stage_at": None,
        "can_promote": True,
        "can_rollback": True,
        "reasons": [],
    }
    obj.update(extra)
    return obj


@dataclass
class FakeServer:
    """Answers requests from a script of (method, path) → responses and records what it was sent."""

    routes: dict[tuple[str, str], list[httpx.Response]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)

    def on(self, method: str, path: str, *responses: httpx.Response) -> None:
        """Queue responses for a route; the last one repeats."""
        self.routes.setdefault((method, "/api/v1" + path), []).extend(responses)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        queue = self.routes.get((request.method, request.url.path))
        if not queue:
            return httpx.Response(404, json={"detail": "Not Found"})
        return queue.pop(0) if len(queue) > 1 else queue[0]

    def bodies(self) -> list[Any]:
        return [json.loads(r.content) if r.content else None for r in self.requests]


@dataclass
class Clock:
    """A fake monotonic clock that sleeping advances."""

    now: float = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


def no_websocket(url: str, headers: dict[str, str]) -> Any:
    raise ConnectionRefusedError(f"{url}: connection refused")


@pytest.fixture
def run(server: FakeServer) -> Iterator[Callable[..., Any]]:
    clock = Clock()
    runtime = Runtime(
        transport=httpx.MockTransport(server.handler),
        sleep=clock.sleep,
        clock=clock,
        websocket=no_websocket,
        interactive=False,
    )
    runner = CliRunner()

    def invoke(*args: str, runtime: Runtime = runtime) -> Any:
        env = {"CANARYD_URL": BASE, "CANARYD_TOKEN": TOKEN}
        return runner.invoke(app, list(args), obj=runtime, env=env)

    yield invoke


def test_deploy_wait_completed_exits_0_and_prints_progress(run: Any, server: FakeServer) -> None:
    """deploy --wait prints each change of state/stage/traffic and exits 0 when the canary completes."""
    server.on("POST", "/applications/7/deployments", httpx.Response(201, json=status_object("pending")))
    server.on(
        "GET",
        "/deployments/42",
        httpx.Response(200, json=status_object("deploying")),
        httpx.Response(200, json=status_object("monitoring", 1, 10)),
        httpx.Response(200, json=status_object("monitoring", 1, 10)),
        httpx.Response(200, json=status_object("monitoring", 2, 50)),
        httpx.Response(200, json=status_object("promoting", 3, 100)),
        httpx.Response(200, json=status_object("completed", 3, 100)),
    )
    result = run("deploy", "7", "v2", "--stages", "10,50,100", "--stage-duration", "60", "--wait")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "deployment 42 of v2 created: pending"
    assert [line.split()[0] for line in lines[1:-1]] == [
        "deploying",
        "monitoring",
        "monitoring",
        "promoting",
        "completed",
    ]
    assert "stage 2/3  traffic 50%" in result.stdout
    assert lines[-1] == "deployment 42 completed"
    assert server.bodies()[0] == {
        "version": "v2",
        "strategy": "canary",
        "config": {"stages": [10, 50, 100], "stage_duration": 60},
    }


def test_deploy_wait_rolled_back_exits_1_with_reasons(run: Any, server: FakeServer) -> None:
    """deploy --wait exits 1 when the canary is rolled back, printing the states and the reasons."""
    server.on("POST", "/applications/7/deployments", httpx.Response(201, json=status_object("pending")))
    reasons = ["canary error rate 30.0% exceeds stable's 0.0% by more than 5 points"]
    server.on(
        "GET",
        "/deployments/42",
        httpx.Response(200, json=status_object("monitoring", 1, 10)),
        httpx.Response(200, json=status_object("rolling_back", 1, 0, reasons=reasons)),
        httpx.Response(200, json=status_object("rolled_back", 1, 0, reasons=reasons)),
    )
    result = run("deploy", "7", "v2")
    assert result.exit_code == 1, result.output
    assert "rolling_back" in result.stdout
    assert "exceeds stable's 0.0% by more than 5 points" in result.stdout
    assert result.stdout.splitlines()[-1] == "deployment 42 rolled_back"


def test_deploy_wait_timeout_exits_5(run: Any, server: FakeServer) -> None:
    """deploy --wait gives up with exit 5 when the deployment outlasts --timeout."""
    server.on("POST", "/applications/7/deployments", httpx.Response(201, json=status_object("pending")))
    server.on("GET", "/deployments/42", httpx.Response(200, json=status_object("monitoring", 1, 10)))
    result = run("deploy", "7", "v2", "--timeout", "10", "--interval", "2")
    assert result.exit_code == 5
    assert "did not finish within 10 s" in result.stderr


def test_deploy_no_wait_sends_config_json_and_idempotency_key(run: Any, server: FakeServer) -> None:
    """deploy --no-wait merges --config-json under the flags, sends Idempotency-Key and returns at once."""
    server.on("POST", "/applications/7/deployments", httpx.Response(201, json=status_object("pending")))
    config = json.dumps({"stages": [5, 100], "error_rate_threshold": 2.5})
    result = run("deploy", "7", "v2", "--no-wait", "--config-json", config, "--idempotency-key", "build-9")
    assert result.exit_code == 0, result.output
    assert len(server.requests) == 1
    assert server.requests[0].headers["Idempotency-Key"] == "build-9"
    assert server.bodies()[0]["config"] == {"stages": [5, 100], "error_rate_threshold": 2.5}


def test_validation_errors_each_printed_on_own_line(run: Any, server: FakeServer) -> None:
    """A 422 answer prints every validation error on its own line and exits 4."""
    detail = [
        {"loc": ["body", "config", "stages", 0], "msg": "stage percentages must be between 0 and 100"},
        {"loc": ["body", "config", "stage_duration"], "msg": "stage_duration must be at least 60 seconds"},
    ]
    server.on("POST", "/applications/7/deployments", httpx.Response(422, json={"detail": detail}))
    result = run("deploy", "7", "v2", "--stages", "150", "--stage-duration", "5")
    assert result.exit_code == 4
    lines = result.stderr.splitlines()
    assert "config.stages.0: stage percentages must be between 0 and 100" in lines
    assert "config.stage_duration: stage_duration must be at least 60 seconds" in lines


def test_plain_string_errors_list_printed(run: Any, server: FakeServer) -> None:
    """A 422 body with a detail string and an `errors` list prints both, one per line."""
    body = {"detail": "invalid deployment", "errors": ["first problem", "second problem"]}
    server.on("POST", "/applications/7/deployments", httpx.Response(422, json=body))
    result = run("deploy", "7", "v2")
    assert result.exit_code == 4
    assert result.stderr.splitlines()[1:] == ["invalid deployment", "first problem", "second problem"]


def test_conflict_detail_printed(run: Any, server: FakeServer) -> None:
    """A 409 prints the server's detail and exits 4."""
    refusal = {"detail": "cannot pause a completed deployment"}
    server.on("POST", "/deployments/42/pause", httpx.Response(409, json=refusal))
    result = run("pause", "42")
    assert result.exit_code == 4
    assert "cannot pause a completed deployment" in result.stderr


def test_promote_next_sends_to_next(run: Any, server: FakeServer) -> None:
    """promote --next posts {"to": "next"}; plain promote posts {}."""
    server.on("POST", "/deployments/42/promote", httpx.Response(202, json=status_object("monitoring", 2, 50)))
    assert run("promote", "42", "--next").exit_code == 0
    assert run("promote", "42").exit_code == 0
    assert server.bodies() == [{"to": "next"}, {}]


def test_rollback_pause_resume_paths_and_bodies(run: Any, server: FakeServer) -> None:
    """rollback sends its reason; pause and resume post empty objects to their routes."""
    for action in ("rollback", "pause", "resume"):
        server.on("POST", f"/deployments/42/{action}", httpx.Response(202))
    assert run("rollback", "42", "--reason", "pager fired").exit_code == 0
    assert run("pause", "42").exit_code == 0
    assert run("resume", "42").exit_code == 0
    assert [r.url.path for r in server.requests] == [
        "/api/v1/deployments/42/rollback",
        "/api/v1/deployments/42/pause",
        "/api/v1/deployments/42/resume",
    ]
    assert server.bodies() == [{"reason": "pager fired"}, {}, {}]


def test_token_sent_as_bearer(run: Any, server: FakeServer) -> None:
    """Every request carries the token as an Authorization: Bearer header."""
    server.on("GET", "/deployments/42", httpx.Response(200, json=status_object("monitoring", 1, 10)))
    result = run("status", "42")
    assert result.exit_code == 0, result.output
    assert server.requests[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert str(server.requests[0].url) == f"{BASE}/api/v1/deployments/42"


def test_token_option_overrides_env(run: Any, server: FakeServer) -> None:
    """--url and --token on the command line win over CANARYD_URL and CANARYD_TOKEN."""
    server.on("GET", "/deployments/42", httpx.Response(200, json=status_object("monitoring")))
    result = run("--url", "http://other:9000/", "--token", "cli-token", "status", "42", "--json")
    assert result.exit_code == 0, result.output
    assert server.requests[0].headers["Authorization"] == "Bearer cli-token"
    assert str(server.requests[0].url) == "http://other:9000/api/v1/deployments/42"
    assert json.loads(result.stdout)["canary_status"] == "monitoring"


def test_status_human_output_names_servers(run: Any, server: FakeServer) -> None:
    """status prints the state, stage, traffic and the servers of each cohort by name."""
    server.on("GET", "/deployments/42", httpx.Response(200, json=status_object("monitoring", 2, 50)))
    result = run("status", "42")
    assert result.exit_code == 0, result.output
    assert "monitoring" in result.stdout
    assert "2/3  traffic 50% (target 50%)" in result.stdout
    assert "web-2, web-3" in result.stdout


def test_events_one_line_each(run: Any, server: FakeServer) -> None:
    """events prints one line per event with seq, time, kind, from→to, stage, traffic, reasons, actor."""
    history = [
        {
            "id": 1,
            "deployment_id": 42,
            "seq": 1,
            "at": "2025-01-01T00:00:00Z",
            "kind": "deployment_created",
            "from_state": None,
            "to_state": "pending",
            "stage": None,
            "traffic_percentage": 0,
            "metrics": {},
            "reasons": [],
            "actor": "ci",
        },
        {
            "id": 2,
            "deployment_id": 42,
            "seq": 2,
            "at": "2025-01-01T00:01:00Z",
            "kind": "rollback_started",
            "from_state": "monitoring",
            "to_state": "rolling_back",
            "stage": 1,
            "traffic_percentage": 10,
            "metrics": {},
            "reasons": ["p95 latency 3x stable"],
            "actor": "judge",
        },
    ]
    server.on("GET", "/deployments/42/events", httpx.Response(200, json=history))
    result = run("events", "42")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    for part in ("2", "2025-01-01T00:01:00Z", "rollback_started", "monitoring→rolling_back", "stage 1"):
        assert part in lines[1]
    assert "10%" in lines[1] and "p95 latency 3x stable" in lines[1] and "by judge" in lines[1]
    assert "-→pending" in lines[0]


def test_watch_tolerates_a_transient_server_error(run: Any, server: FakeServer) -> None:
    """watch retries through a 503 and exits 0 once the deployment completes."""
    server.on(
        "GET",
        "/deployments/42",
        httpx.Response(503, json={"detail": "database unavailable"}),
        httpx.Response(200, json=status_object("completed", 3, 100)),
    )
    result = run("watch", "42")
    assert result.exit_code == 0, result.output
    assert "retrying" in result.stderr


def test_connection_refused_exits_2() -> None:
    """An unreachable server gives a clear message and exit 2."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    runtime = Runtime(transport=httpx.MockTransport(refuse), sleep=lambda s: None, websocket=no_websocket)
    env = {"CANARYD_TOKEN": None, "CANARYD_URL": None}
    result = CliRunner().invoke(app, ["--url", BASE, "status", "42"], obj=runtime, env=env)
    assert result.exit_code == 2
    assert f"cannot reach canaryd at {BASE}/api/v1: [Errno 111] Connection refused" in result.stderr


def test_bad_stages_is_a_usage_error(run: Any, server: FakeServer) -> None:
    """--stages that are not numbers exit 2 without calling the server."""
    result = run("deploy", "7", "v2", "--stages", "10,lots")
    assert result.exit_code == 2
    assert "'lots' is not a number" in result.stderr
    assert server.requests == []


def test_failed_deployment_exits_3(run: Any, server: FakeServer) -> None:
    """watch exits 3 when the deployment ends failed (its rollback could not finish)."""
    server.on("GET", "/deployments/42", httpx.Response(200, json=status_object("failed", 1, 0)))
    result = run("watch", "42")
    assert result.exit_code == 3
    assert result.stdout.splitlines()[-1] == "deployment 42 failed"


def test_replayed_idempotency_key_is_not_reported_as_created(run: Any, server: FakeServer) -> None:
    """A 200 for a replayed Idempotency-Key says the deployment already existed, not "created"."""
    server.on("POST", "/applications/7/deployments", httpx.Response(200, json=status_object("monitoring")))
    result = run("deploy", "7", "v2", "--no-wait", "--idempotency-key", "build-9")
    assert result.exit_code == 0, result.output
    assert "created" not in result.stdout
    assert "already exists for this Idempotency-Key" in result.stdout


def test_watch_reconnects_with_after_seq_and_shows_each_event_once(server: FakeServer) -> None:
    """A dropped WebSocket is reopened with ?after_seq= the last event shown; a repeated event is dropped."""
    server.on("GET", "/deployments/42/events", httpx.Response(200, json=[]))
    opened: list[str] = []

    def event(seq: int, kind: str) -> str:
        return json.dumps({"type": "event", "seq": seq, "kind": kind, "deployment_id": 42})

    scripts = [
        [
            json.dumps({"type": "status", **status_object("monitoring", 1, 10)}),
            event(1, "health_check"),
            None,
        ],
        [
            json.dumps({"type": "status", **status_object("monitoring", 1, 10)}),
            event(1, "health_check"),
            event(2, "promoted"),
            json.dumps({"type": "status", **status_object("completed", 3, 100)}),
        ],
    ]

    class Scripted:
        def __init__(self, messages: list[str | None]) -> None:
            self.messages = messages

        def __enter__(self) -> Scripted:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def recv(self, timeout: float | None = None) -> str:
            message = self.messages.pop(0)
            if message is None:
                raise ConnectionResetError("connection lost")
            return message

    def opener(url: str, headers: dict[str, str]) -> Scripted:
        opened.append(url)
        assert headers == {"Authorization": f"Bearer {TOKEN}"}
        return Scripted(scripts[len(opened) - 1])

    clock = Clock()
    runtime = Runtime(
        transport=httpx.MockTransport(server.handler),
        sleep=clock.sleep,
        clock=clock,
        websocket=opener,
        interactive=False,
    )
    env = {"CANARYD_URL": BASE, "CANARYD_TOKEN": TOKEN}
    result = CliRunner().invoke(app, ["watch", "42"], obj=runtime, env=env)
    assert result.exit_code == 0, result.output
    assert opened == [
        "ws://canaryd.test:8080/api/v1/deployments/42/ws",
        "ws://canaryd.test:8080/api/v1/deployments/42/ws?after_seq=1",
    ]
    assert result.stdout.count("health_check") == 1, result.stdout
    assert result.stdout.count("promoted") == 1
    assert result.stdout.splitlines()[-1] == "deployment 42 completed"


def test_app_update_sends_the_defaults_file_and_prints_them(
    run: Any, server: FakeServer, tmp_path: Any
) -> None:
    """`app update ID --defaults-file` PATCHes deployment_defaults with the file's object; mistakes exit 2."""
    defaults = {"stages": [10, 100], "stage_duration": 120}
    (tmp_path / "d.json").write_text(json.dumps(defaults))
    answer = {
        "id": 7,
        "name": "shop",
        "current_version": "v1",
        "server_ids": [1],
        "deployment_defaults": defaults,
    }
    server.on("PATCH", "/applications/7", httpx.Response(200, json=answer))
    result = run("app", "update", "7", "--defaults-file", str(tmp_path / "d.json"))
    assert result.exit_code == 0, result.output
    assert server.bodies() == [{"deployment_defaults": defaults}]
    assert "  stage_duration: 120" in result.stdout.splitlines()
    (tmp_path / "bad.json").write_text("[1]")
    for args in (
        ["--defaults-file", str(tmp_path / "nope.json")],
        ["--defaults-file", str(tmp_path / "bad.json")],
        [],
    ):
        result = run("app", "update", "7", *args)
        assert result.exit_code == 2, (args, result.output)
    assert len(server.requests) == 1, "nothing sent for a usage error"


def test_deploy_ab_sends_the_strategy_and_match_rules(run: Any, server: FakeServer) -> None:
    """--match (repeatable; = for a value, ~ for a regex) sends an A/B test: strategy ab and config.ab;
    --strategy names another strategy and canaryd judges it; a malformed rule is a usage error."""
    server.on("POST", "/applications/7/deployments", httpx.Response(201, json=status_object("pending")))
    result = run(
        "deploy", "7", "v2", "--no-wait", "--stage-duration", "600",
        "--match", "header:X-Beta=1", "--match", "cookie:plan=pro", "--match", "header:User-Agent~.*Mobi=le.*",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert server.bodies()[0] == {
        "version": "v2",
        "strategy": "ab",
        "config": {
            "stage_duration": 600,
            "ab": {
                "match": [
                    {"header": "X-Beta", "equals": "1"},
                    {"cookie": "plan", "equals": "pro"},
                    {"header": "User-Agent", "regex": ".*Mobi=le.*"},
                ]
            },
        },
    }
    result = run("deploy", "7", "v3", "--no-wait", "--strategy", "rolling")
    assert result.exit_code == 0 and server.bodies()[1]["strategy"] == "rolling", result.output
    result = run("deploy", "7", "v3", "--no-wait", "--match", "query:x=1")
    assert result.exit_code == 2 and "write header:NAME=VALUE" in result.stderr
    assert len(server.requests) == 2


def test_deploy_rolling_block_implies_the_strategy(run: Any, server: FakeServer) -> None:
    """A `rolling` block in --config-json sends strategy rolling (unless another is named)."""
    server.on("POST", "/applications/7/deployments", httpx.Response(201, json=status_object("pending")))
    result = run("deploy", "7", "v2", "--no-wait", "--config-json", '{"rolling": {"batch_size": 2}}')
    assert result.exit_code == 0, result.output
    assert server.bodies()[0] == {
        "version": "v2",
        "strategy": "rolling",
        "config": {"rolling": {"batch_size": 2}},
    }


def test_deploy_mirror_sends_the_strategy_and_mirror_settings(run: Any, server: FakeServer) -> None:
    """--mirror PERCENT and --mirror-then send a mirror test (strategy mirror, config.mirror), over a mirror
    block given in --config-json; canaryd judges the values."""
    server.on("POST", "/applications/7/deployments", httpx.Response(201, json=status_object("pending")))
    result = run("deploy", "7", "v2", "--no-wait", "--mirror", "20", "--stages", "25,100")
    assert result.exit_code == 0, result.output
    assert server.bodies()[0] == {
        "version": "v2",
        "strategy": "mirror",
        "config": {"stages": [25.0, 100.0], "mirror": {"percent": 20}},
    }
    config = '{"mirror": {"percent": 5}}'
    result = run("deploy", "7", "v3", "--no-wait", "--config-json", config, "--mirror-then", "stop")
    assert result.exit_code == 0, result.output
    assert server.bodies()[1]["strategy"] == "mirror"
    assert server.bodies()[1]["config"] == {"mirror": {"percent": 5, "then": "stop"}}


def test_deploy_wait_mirror_test_that_passed_and_stopped_exits_0(run: Any, server: FakeServer) -> None:
    """A mirror test with then: stop ends rolled back by design: exit 0 when its reason says it passed, 1
    when the judge rolled it back."""
    from canaryd.cli.ctl import MIRROR_PASSED, terminal_exit
    from canaryd.domain.strategy import MIRROR_PASSED as SAID

    assert MIRROR_PASSED == SAID
    passed = [f"{SAID}: the canary servers go back to v1 without promoting"]
    failed = ["error_rate: canary 27.3 % vs stable 0.0 % (+27.3 pp, limit +5.0 pp)"]
    created = status_object("pending", strategy="mirror")
    server.on("POST", "/applications/7/deployments", httpx.Response(201, json=created))
    done = status_object("rolled_back", 1, 0, strategy="mirror", reasons=passed)
    server.on("GET", "/deployments/42", httpx.Response(200, json=done))
    result = run("deploy", "7", "v2", "--mirror", "20", "--mirror-then", "stop")
    assert result.exit_code == 0, result.output
    assert terminal_exit(status_object("rolled_back", strategy="mirror", reasons=failed)) == 1
    assert terminal_exit(status_object("rolled_back", strategy="canary", reasons=passed)) == 1
