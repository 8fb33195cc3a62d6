"""Webhook checks on real parts: canaryd's API and workers, real nginx, five sample apps, and a real HTTP
check endpoint on a loopback address that verifies each call's signature and answers as scripted."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.fixtures.stack import LoadGenerator, Stack

SECRET = "e2e-check-secret-0123"
#: Two short stages, judged by the threshold judge on few requests (latency is noise on a loaded machine).
FAST = {
    "stages": [20, 50],
    "stage_duration": 2,
    "health_check_interval": 1,
    "judge": "threshold",
    "min_requests": 10,
    "latency_min_difference_ms": 1000,
}


@dataclass
class Receiver:
    """What the check endpoint answers (in order, the last repeats) and what it was sent."""

    answers: list[tuple[int, bytes]]
    calls: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""


@contextlib.contextmanager
def check_endpoint(answers: list[tuple[int, bytes]]) -> Iterator[Receiver]:
    """A real HTTP server on a loopback address of its own (127.0.x.y), in a thread."""
    receiver = Receiver(list(answers))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            receiver.calls.append(
                {"body": json.loads(body), "signed": self.headers["X-Canaryd-Signature"] == expected}
            )
            status, text = receiver.answers.pop(0) if len(receiver.answers) > 1 else receiver.answers[0]
            self.send_response(status)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, *args: Any) -> None:
            pass

    host = f"127.0.{random.randint(10, 250)}.{random.randint(100, 250)}"
    server = ThreadingHTTPServer((host, 0), Handler)
    receiver.url = f"http://{host}:{server.server_address[1]}/gate"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


async def test_pre_stage_check_holds_then_proceeds(any_stack: Stack) -> None:
    """A blocking pre-stage check answering 503 holds the stage at the previous split with its answer as the
    reason; on 200 the stage starts. Each call is signed and carries the status, its secret redacted."""
    s = any_stack
    await s.register("v1")
    bad = await s.deploy(
        "v2",
        {**FAST, "checks": [{"name": "x y", "point": "pre_stage", "url": "file:///etc", "secret": "Zq9-pw"}]},
    )
    assert bad.status_code == 422
    problems = [p["msg"] for p in bad.json()["detail"]]
    assert len(problems) == 3 and "Zq9-pw" not in json.dumps(bad.json()), problems
    answers = [(503, b"load test\nstill running"), (503, b"load test still running"), (200, b"go")]
    with check_endpoint(answers) as endpoint:
        load = LoadGenerator(s.proxy_url, rate=40).start()
        gate = {
            "name": "loadtest",
            "point": "pre_stage",
            "url": endpoint.url,
            "stages": [50],
            "secret": SECRET,
        }
        r = await s.deploy("v2", {**FAST, "checks": [gate]})
        assert r.status_code == 201, r.text
        dep_id = r.json()["id"]
        for _ in range(150):
            held = await s.status(dep_id)
            if any("check loadtest refused" in reason for reason in held["reasons"]):
                break
            # Each status read costs the API ~5 ms of CPU; the gate holds the stage until it passes.
            await asyncio.sleep(0.2)
        assert held["canary_status"] == "monitoring" and held["current_stage"] == 1, held
        assert held["current_traffic_percentage"] == 20
        assert (
            held["reasons"][0]
            == "before stage 2 (50 %): check loadtest refused: HTTP 503: load test still running"
        )
        assert SECRET not in json.dumps(held) and held["config"]["checks"][0]["secret"] == "[redacted]"
        await s.wait(dep_id, timeout=60)
        await load.stop()
    status = await s.status(dep_id)
    assert status["canary_status"] == "completed", status["reasons"]
    assert await s.fleet_versions() == ["v2"] * 5
    assert len(endpoint.calls) == 3 and all(c["signed"] for c in endpoint.calls)
    sent = endpoint.calls[0]["body"]
    assert (sent["check"], sent["point"], sent["stage"], sent["stage_percentage"]) == (
        "loadtest",
        "pre_stage",
        2,
        50,
    )
    assert sent["deployment"]["id"] == dep_id and sent["deployment"]["current_stage"] == 1
    events = await s.events(dep_id)
    kinds = [e["kind"] for e in events if e["kind"].startswith("check_") or e["kind"] == "stage_advanced"]
    assert kinds == ["stage_advanced", "check_failed", "check_failed", "check_passed", "stage_advanced"]
    failed = next(e for e in events if e["kind"] == "check_failed")
    assert failed["metrics"]["status_code"] == 503 and failed["metrics"]["body"] == "load test still running"
    assert SECRET not in json.dumps(events)
