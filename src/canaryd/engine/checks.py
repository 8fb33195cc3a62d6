"""Calls a webhook check (a `CallCheck` effect) and records its outcome as an event. What a refusal leads to
is decided in domain/checks.py; the HTTP call itself goes through the `Outside` port (`call_check`), so the
engine's tests can script the answers."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from canaryd.domain.checks import shown
from canaryd.domain.plan import CallCheck, CheckRefused, Event, EventKind

#: Pause between the tries of a check called within one tick (during_stage, post_rollback), seconds.
RETRY_PAUSE_SECONDS = 1.0
SIGNATURE_HEADER = "X-Canaryd-Signature"
#: The most of a check's answer read (the rest is not needed for a reason).
MAX_ANSWER_BYTES = 4096


@dataclass(frozen=True, slots=True)
class CheckRequest:
    """One POST to a check: exact body bytes (what the signature covers), headers, timeout in seconds."""

    url: str
    body: bytes
    headers: Mapping[str, str]
    timeout: float


@dataclass(frozen=True, slots=True)
class CheckAnswer:
    """What the check answered: its HTTP status and (the start of) its body, or why there was no answer."""

    status: int | None
    body: bytes = b""
    error: str | None = None
    ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def reason(self) -> str:
        if self.status is None:
            return f"no answer: {self.error or 'unknown error'}"
        text = shown(self.body)
        return f"HTTP {self.status}" + (f": {text}" if text else "")


class CheckRefusedError(Exception):
    """A blocking check did not answer 2xx: the rest of the plan must not happen."""

    def __init__(self, signal: CheckRefused) -> None:
        super().__init__(f"{signal.label}: check {signal.check.name} refused: {signal.reason}")
        self.signal = signal


def signature(secret: str, body: bytes) -> str:
    """The X-Canaryd-Signature value: sha256=<hex HMAC-SHA256(secret, body)>."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def request_for(effect: CallCheck, status: Mapping[str, Any]) -> CheckRequest:
    """The check's request: the deployment's status (secrets redacted), the point and the stage, as JSON."""
    check = effect.check
    payload = {
        "check": check.name,
        "point": check.point,
        "stage": effect.stage,
        "stage_percentage": effect.percentage,
        "deployment": dict(status),
    }
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "canaryd", "X-Canaryd-Check": check.name}
    if check.secret:
        headers[SIGNATURE_HEADER] = signature(check.secret, body)
    return CheckRequest(check.url, body, headers, check.timeout)


async def post_check(http: httpx.AsyncClient, request: CheckRequest) -> CheckAnswer:
    """POSTs a check over the process's HTTP client; never raises for the check's own failures. Redirects
    are not followed (a 3xx is a refusal), and at most MAX_ANSWER_BYTES of the answer are read."""
    started = time.monotonic()
    try:
        async with (
            asyncio.timeout(request.timeout),
            http.stream(
                "POST",
                request.url,
                content=request.body,
                headers=dict(request.headers),
                timeout=request.timeout,
                follow_redirects=False,
            ) as response,
        ):
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) >= MAX_ANSWER_BYTES:
                    break
            return CheckAnswer(response.status_code, body[:MAX_ANSWER_BYTES], None, _ms(started))
    except TimeoutError:
        return CheckAnswer(None, error=f"no answer within {request.timeout:g} s", ms=_ms(started))
    except (httpx.HTTPError, OSError) as exc:
        why = str(exc) or type(exc).__name__
        if isinstance(exc, httpx.TimeoutException):
            why = f"no answer within {request.timeout:g} s"
        return CheckAnswer(None, error=why, ms=_ms(started))


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000


def outcome_event(effect: CallCheck, answer: CheckAnswer, tries: int) -> Event:
    """The history event of a check's call (check_passed or check_failed). The URL is not recorded: it may
    carry a token."""
    check = effect.check
    verdict = "passed" if answer.ok else "refused"
    metrics: dict[str, Any] = {
        "check": check.name,
        "point": check.point,
        "status_code": answer.status,
        "ms": round(answer.ms, 1),
        "tries": tries,
        "blocking": effect.blocking,
    }
    if answer.body:
        metrics["body"] = shown(answer.body)
    if answer.error:
        metrics["error"] = answer.error
    return Event(
        EventKind.CHECK_PASSED if answer.ok else EventKind.CHECK_FAILED,
        (f"{effect.label}: check {check.name} {verdict}: {answer.reason()}",),
        stage=effect.stage,
        traffic_percentage=effect.percentage,
        metrics=metrics,
    )


__all__ = [
    "RETRY_PAUSE_SECONDS",
    "SIGNATURE_HEADER",
    "CheckAnswer",
    "CheckRefusedError",
    "CheckRequest",
    "outcome_event",
    "post_check",
    "request_for",
    "signature",
]
