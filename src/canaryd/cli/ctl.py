"""`canaryctl`: the CI and operator client of canaryd's HTTP API (`/api/v1`, Bearer token).

Exit codes, so a pipeline can tell outcomes apart (also in README.md):
  0  the request was accepted, or the deployment completed
  1  the deployment was rolled back
  2  usage error, or canaryd unreachable (connection refused, DNS, TLS)
  3  the deployment failed (its rollback could not finish: a person must look)
  4  canaryd refused the request (HTTP 4xx/5xx: validation, conflict, not found, no permission)
  5  --timeout passed before the deployment finished

`watch` and `deploy --wait` follow the deployment's WebSocket (the status, then every event; on a dropped
connection they reconnect with `?after_seq=` the last event seen) and fall back to polling the status when
the WebSocket cannot be opened. On a terminal they draw a live view (stage, split, canary vs stable figures,
verdict); otherwise, and with `--output json`, one line per event.

Every HTTP call goes through functions that take an `httpx.Client`; the client is built from the global
options and an optional `Runtime` passed as the Click context object, so tests swap the transport, the
WebSocket opener, the sleep and the clock without monkeypatching.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
import typer

DEFAULT_URL = "http://127.0.0.1:8080"
API_PREFIX = "/api/v1"
EXIT_OK = 0
EXIT_ROLLED_BACK = 1
EXIT_USAGE = 2
EXIT_DEPLOYMENT_FAILED = 3
EXIT_API = 4
EXIT_TIMEOUT = 5
#: canary_status (or status) values after which nothing more happens, with the exit code each one means.
#: The reason a `then: stop` mirror test that passed ends with (as canaryd.domain.strategy says it).
MIRROR_PASSED = "the mirror test passed and mirror.then is stop"
TERMINAL_EXIT = {"completed": EXIT_OK, "rolled_back": EXIT_ROLLED_BACK, "failed": EXIT_DEPLOYMENT_FAILED}
#: Polling survives this many consecutive transient failures (connection errors, 5xx) before giving up.
MAX_POLL_FAILURES = 5
#: A WebSocket silent this long is double-checked with one status request (a lost pub/sub message must not
#: leave a pipeline waiting for its timeout).
WS_QUIET_SECONDS = 15.0
#: Reconnections of a dropped WebSocket in a row before falling back to polling.
MAX_WS_RECONNECTS = 5

JSONObject = dict[str, Any]
Output = Literal["text", "json"]


class CtlError(Exception):
    """A failure to report to the user: the lines to print and the exit code to leave with."""

    def __init__(self, lines: list[str], code: int, status: int | None = None) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines
        self.code = code
        self.status = status

    @property
    def transient(self) -> bool:
        """True for failures worth retrying while polling: no connection, or a 5xx answer."""
        return self.status is None or self.status >= 500


class MessageStream(Protocol):
    """What canaryctl needs of a WebSocket: text messages, with a timeout (raises TimeoutError)."""

    def recv(self, timeout: float | None = None) -> str | bytes: ...


WebSocketOpener = Callable[[str, dict[str, str]], AbstractContextManager[MessageStream]]


def open_websocket(url: str, headers: dict[str, str]) -> AbstractContextManager[MessageStream]:
    """A real WebSocket (websockets' synchronous client), never through an environment proxy."""
    from websockets.sync.client import connect

    return connect(url, additional_headers=headers, proxy=None, open_timeout=10)


@dataclass(frozen=True)
class Runtime:
    """What canaryctl takes from the outside world; tests pass their own as the context object."""

    transport: httpx.BaseTransport | None = None
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    websocket: WebSocketOpener = open_websocket
    #: None: ask stdout whether it is a terminal.
    interactive: bool | None = None


@dataclass(frozen=True)
class Session:
    """The global options of one invocation."""

    url: str
    token: str | None
    runtime: Runtime = field(default_factory=Runtime)
    output: Output = "text"

    @property
    def live(self) -> bool:
        """Draw the live view: text output to a terminal."""
        if self.output != "text":
            return False
        if self.runtime.interactive is not None:
            return self.runtime.interactive
        return sys.stdout.isatty()


# --- HTTP ------------------------------------------------------------------------------------------------


def api_base(url: str) -> str:
    """The API root for a server URL, accepting URLs that already end in /api/v1."""
    base = url.rstrip("/")
    return base if base.endswith(API_PREFIX) else base + API_PREFIX


def make_client(session: Session, timeout: float = 30.0) -> httpx.Client:
    """An httpx client for the API, sending the token as a Bearer credential."""
    headers = {"Accept": "application/json", "User-Agent": "canaryctl"}
    if session.token:
        headers["Authorization"] = f"Bearer {session.token}"
    return httpx.Client(
        base_url=api_base(session.url), headers=headers, timeout=timeout, transport=session.runtime.transport
    )


def _error_item(item: Any) -> str:
    """One validation error as a line: FastAPI's {loc, msg} objects or plain strings."""
    if isinstance(item, dict):
        msg = str(item.get("msg") or item.get("message") or item.get("detail") or json.dumps(item))
        loc = [str(p) for p in item.get("loc") or [] if p != "body"]
        return f"{'.'.join(loc)}: {msg}" if loc else msg
    return str(item)


def error_lines(response: httpx.Response) -> list[str]:
    """What to print for an error answer: its `detail` (and `errors`), one error per line."""
    head = f"error: HTTP {response.status_code}"
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return [f"{head}: {text[:500]}" if text else f"{head} {response.reason_phrase}"]
    if not isinstance(body, dict):
        return [f"{head}: {body}"]
    lines: list[str] = []
    for key in ("detail", "errors"):
        value = body.get(key)
        if isinstance(value, list):
            lines.extend(_error_item(item) for item in value)
        elif value:
            lines.append(_error_item(value))
    return [head, *lines] if lines else [f"{head}: {json.dumps(body)[:500]}"]


def request(client: httpx.Client, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    """Sends one request; returns (HTTP status, decoded JSON body or None) or raises CtlError."""
    try:
        response = client.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        reason = str(exc) or type(exc).__name__
        where = str(client.base_url).rstrip("/")
        raise CtlError([f"error: cannot reach canaryd at {where}: {reason}"], EXIT_USAGE) from exc
    if response.is_error:
        raise CtlError(error_lines(response), EXIT_API, response.status_code)
    if not response.content:
        return response.status_code, None
    try:
        return response.status_code, response.json()
    except ValueError as exc:
        raise CtlError([f"error: canaryd answered {method} {path} with non-JSON"], EXIT_API) from exc


def call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    """Sends one request; returns the decoded JSON body (None when empty) or raises CtlError."""
    return request(client, method, path, **kwargs)[1]


def create_deployment(
    client: httpx.Client, app_id: str, body: JSONObject, idempotency_key: str | None = None
) -> tuple[JSONObject, bool]:
    """POST /applications/{id}/deployments; returns the status object and whether it was created now
    (201) rather than replayed for an Idempotency-Key used before (200)."""
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    code, result = request(client, "POST", f"/applications/{app_id}/deployments", json=body, headers=headers)
    return _expect_object(result), code == 201


def get_deployment(client: httpx.Client, dep_id: str) -> JSONObject:
    """GET /deployments/{id}: the status object."""
    return _expect_object(call(client, "GET", f"/deployments/{dep_id}"))


def list_events(client: httpx.Client, dep_id: str, after_seq: int = 0) -> list[JSONObject]:
    """GET /deployments/{id}/events, oldest first."""
    params = {"after_seq": after_seq} if after_seq else {}
    result = call(client, "GET", f"/deployments/{dep_id}/events", params=params)
    if isinstance(result, dict) and isinstance(result.get("events"), list):
        result = result["events"]
    if not isinstance(result, list):
        raise CtlError(["error: canaryd answered the events request with something other than a list"], 4)
    return [e for e in result if isinstance(e, dict)]


def act(client: httpx.Client, dep_id: str, action: str, body: JSONObject) -> Any:
    """POST /deployments/{id}/{promote|rollback|pause|resume}."""
    return call(client, "POST", f"/deployments/{dep_id}/{action}", json=body)


def list_of(client: httpx.Client, path: str, params: dict[str, Any]) -> list[JSONObject]:
    result = call(client, "GET", path, params=params)
    if not isinstance(result, list):
        raise CtlError([f"error: canaryd answered GET {path} with something other than a list"], EXIT_API)
    return [r for r in result if isinstance(r, dict)]


def resolve_application(client: httpx.Client, ref: str) -> str:
    """An application id from an id or a name (names are looked up in the list, page by page)."""
    if ref.isdigit():
        return ref
    offset, page = 0, 500
    while True:
        apps = list_of(client, "/applications", {"limit": page, "offset": offset})
        for app in apps:
            if app.get("name") == ref:
                return str(app["id"])
        if len(apps) < page:
            raise CtlError([f"error: no application named {ref!r}"], EXIT_API, 404)
        offset += page


def _expect_object(result: Any) -> JSONObject:
    if not isinstance(result, dict):
        raise CtlError(["error: canaryd answered with something other than a JSON object"], EXIT_API)
    return result


# --- formatting ------------------------------------------------------------------------------------------


def fmt(value: Any) -> str:
    """A field value for humans: '-' for nothing, lists joined, servers by name."""
    if value is None or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ", ".join(fmt(v) for v in value)
    if isinstance(value, dict):
        for key in ("name", "host", "id"):
            if key in value:
                return str(value[key])
        return json.dumps(value, sort_keys=True)
    return str(value)


def pct(value: Any) -> str:
    """A share of traffic: '10 %', or '-' when unknown (never a made-up 0 or 100)."""
    return "-" if value is None else f"{fmt(value)} %"


def fmt_reasons(reasons: Any) -> str:
    """Reasons joined by '; ' ('' when there are none)."""
    if not reasons:
        return ""
    if isinstance(reasons, list):
        return "; ".join(fmt(r) for r in reasons)
    return fmt(reasons)


def phase(status: JSONObject) -> str:
    """The deployment's state: canary_status, falling back to status."""
    return str(status.get("canary_status") or status.get("status") or "unknown")


def progress_key(status: JSONObject) -> tuple[str, Any, Any]:
    """What must change for a new progress line."""
    return phase(status), status.get("current_stage"), status.get("current_traffic_percentage")


def progress_line(status: JSONObject) -> str:
    """One line of progress: state, stage, traffic share and, if any, the reasons."""
    line = (
        f"{phase(status):<12} stage {fmt(status.get('current_stage'))}/{fmt(status.get('total_stages'))}"
        f"  traffic {fmt(status.get('current_traffic_percentage'))}%"
    )
    reasons = fmt_reasons(status.get("reasons"))
    return f"{line}  ({reasons})" if reasons else line


def terminal_exit(status: JSONObject) -> int | None:
    """The exit code a finished deployment means, or None while it is still going. A mirror test with
    `then: stop` that passed ends rolled back by design: that is a success (0)."""
    for key in ("canary_status", "status"):
        value = status.get(key)
        if isinstance(value, str) and value in TERMINAL_EXIT:
            if value == "rolled_back" and mirror_test_passed(status):
                return EXIT_OK
            return TERMINAL_EXIT[value]
    return None


def mirror_test_passed(status: JSONObject) -> bool:
    """Whether a rolled-back deployment is a mirror test that passed and was told to stop (its reason says
    so: canaryd.domain.strategy.MIRROR_PASSED)."""
    reasons = status.get("reasons")
    return (
        status.get("strategy") == "mirror"
        and isinstance(reasons, list)
        and any(isinstance(r, str) and r.startswith(MIRROR_PASSED) for r in reasons)
    )


def status_lines(s: JSONObject) -> list[str]:
    """The status object as a short human report."""
    g = s.get
    return [
        f"deployment    {fmt(g('id'))}  (application {fmt(g('application_id'))}, "
        f"{fmt(g('previous_version'))} → {fmt(g('version'))}, strategy {fmt(g('strategy'))})",
        f"state         {phase(s)}  (status {fmt(g('status'))})",
        f"stage         {fmt(g('current_stage'))}/{fmt(g('total_stages'))}  traffic "
        f"{fmt(g('current_traffic_percentage'))}% (target {fmt(g('target_traffic_percentage'))}%)",
        f"canary        {fmt(g('canary_servers'))}",
        f"stable        {fmt(g('stable_servers'))}",
        f"stage started {fmt(g('stage_started_at'))}  next stage at {fmt(g('next_stage_at'))}",
        f"can promote   {fmt(g('can_promote'))}  can rollback {fmt(g('can_rollback'))}",
        f"reasons       {fmt_reasons(g('reasons')) or '-'}",
        f"metrics       {json.dumps(g('metrics'), sort_keys=True) if g('metrics') else '-'}",
    ]


def event_line(e: JSONObject) -> str:
    """One event: seq, time, kind, from→to, stage, traffic %, reasons, actor."""
    transition = f"{fmt(e.get('from_state'))}→{fmt(e.get('to_state'))}"
    parts = [
        f"{fmt(e.get('seq')):>4}",
        fmt(e.get("at")),
        f"{fmt(e.get('kind')):<18}",
        f"{transition:<24}",
        f"stage {fmt(e.get('stage'))}",
        f"{fmt(e.get('traffic_percentage'))}%",
    ]
    reasons = fmt_reasons(e.get("reasons"))
    if reasons:
        parts.append(reasons)
    parts.append(f"by {fmt(e.get('actor'))}")
    return "  ".join(parts)


def cohort_figures(snapshot: Any) -> dict[str, JSONObject]:
    """The canary's and stable's figures of a metrics snapshot (requests, errors, p95)."""
    out: dict[str, JSONObject] = {}
    if isinstance(snapshot, dict):
        for cohort in ("canary", "stable"):
            figures = snapshot.get(cohort)
            if isinstance(figures, dict):
                out[cohort] = figures
    return out


def verdict_text(snapshot: Any) -> str:
    """'pass', 'fail: <reasons>' or 'inconclusive: ...' from a snapshot; '' without a verdict."""
    verdict = snapshot.get("verdict") if isinstance(snapshot, dict) else None
    if not isinstance(verdict, dict):
        return ""
    reasons = fmt_reasons(verdict.get("reasons"))
    return f"{verdict.get('outcome')}: {reasons}" if reasons else str(verdict.get("outcome"))


def live_view(s: JSONObject, recent: list[str]) -> list[str]:
    """The live view of a deployment on a terminal: header, split, cohort table, verdict, recent events."""
    g = s.get
    lines = [
        f"deployment {fmt(g('id'))}  application {fmt(g('application_id'))}  "
        f"{fmt(g('previous_version'))} → {fmt(g('version'))}",
        f"state {phase(s)}   stage {fmt(g('current_stage'))}/{fmt(g('total_stages'))}   split: canary "
        f"{pct(g('current_traffic_percentage'))} (target {pct(g('target_traffic_percentage'))})"
        + (f"   next stage at {g('next_stage_at')}" if g("next_stage_at") else ""),
        f"          {'requests':>9} {'errors':>7} {'error %':>8} {'p95 ms':>8}",
    ]
    figures = cohort_figures(g("metrics"))
    for cohort in ("canary", "stable"):
        f = figures.get(cohort, {})
        rate = f.get("error_rate")
        rate_text = "-" if rate is None else f"{100 * float(rate):.2f}"
        lines.append(
            f"  {cohort:<7} {fmt(f.get('requests')):>9} {fmt(f.get('errors')):>7} {rate_text:>8} "
            f"{fmt(f.get('p95_ms')):>8}"
        )
    lines.append(f"verdict   {verdict_text(g('metrics')) or '-'}"[:200])
    lines.append(f"reasons   {fmt_reasons(g('reasons')) or '-'}"[:200])
    lines += [f"  {line}"[:200] for line in recent[-5:]]
    return lines


def echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True))


# --- following a deployment ------------------------------------------------------------------------------


class Printer:
    """What following prints: JSON lines, plain lines, or a live view redrawn in place on a terminal."""

    def __init__(self, output: Output, live: bool) -> None:
        self.output, self.live = output, live
        self.last_key: tuple[str, Any, Any] | None = None
        self.drawn = 0
        self.recent: list[str] = []

    def status(self, status: JSONObject) -> None:
        if self.output == "json":
            typer.echo(json.dumps({"type": "status", **status}, sort_keys=True))
        elif self.live:
            self._draw(status)
        elif progress_key(status) != self.last_key:
            typer.echo(progress_line(status))
        self.last_key = progress_key(status)

    def event(self, event: JSONObject) -> None:
        if self.output == "json":
            typer.echo(json.dumps({"type": "event", **event}, sort_keys=True))
        elif self.live:
            self.recent.append(event_line(event))
        else:
            typer.echo(event_line(event))

    def _draw(self, status: JSONObject) -> None:
        lines = live_view(status, self.recent)
        # Move up over the previous drawing and clear it, then draw again (ANSI: CPL, ED).
        prefix = f"\x1b[{self.drawn}F\x1b[J" if self.drawn else ""
        typer.echo(prefix + "\n".join(lines), color=True)  # keep the escapes: the caller chose live
        self.drawn = len(lines)

    def done(self, dep_id: str, status: JSONObject) -> None:
        if self.output == "json":
            return
        typer.echo(f"deployment {dep_id} {phase(status)}")


def _poll(client: httpx.Client, dep_id: str, failures: int) -> tuple[JSONObject | None, int]:
    """One status poll that tolerates a few transient failures in a row."""
    try:
        return get_deployment(client, dep_id), 0
    except CtlError as exc:
        if not exc.transient or failures + 1 >= MAX_POLL_FAILURES:
            raise
        typer.echo(f"warning: {exc.lines[-1]} (retrying)", err=True)
        return None, failures + 1


def _timed_out(dep_id: str, timeout: float, status: JSONObject | None) -> CtlError:
    state = phase(status) if status is not None else "unknown"
    return CtlError(
        [f"error: deployment {dep_id} did not finish within {timeout:g} s (last state: {state})"],
        EXIT_TIMEOUT,
    )


def poll_follow(
    client: httpx.Client,
    dep_id: str,
    runtime: Runtime,
    deadline: float,
    timeout: float,
    interval: float,
    printer: Printer,
) -> int:
    """Polls a deployment until it finishes, printing every change; returns the exit code it means."""
    failures = 0
    status: JSONObject | None = None
    while True:
        polled, failures = _poll(client, dep_id, failures)
        if polled is not None:
            status = polled
            printer.status(status)
            code = terminal_exit(status)
            if code is not None:
                printer.done(dep_id, status)
                return code
        remaining = deadline - runtime.clock()
        if remaining <= 0:
            raise _timed_out(dep_id, timeout, status)
        runtime.sleep(min(interval, remaining))


def websocket_url(client: httpx.Client, dep_id: str, after_seq: int) -> str:
    base = urlsplit(str(client.base_url).rstrip("/"))
    scheme = "wss" if base.scheme == "https" else "ws"
    query = urlencode({"after_seq": after_seq}) if after_seq else ""
    return urlunsplit((scheme, base.netloc, f"{base.path}/deployments/{dep_id}/ws", query, ""))


class WebSocketUnavailableError(Exception):
    """The WebSocket could not be opened or kept: follow by polling instead."""


@dataclass
class WebSocketFollower:
    """What following one deployment over its WebSocket has seen; it outlives each connection, so that a
    reconnection resumes after the last event shown."""

    client: httpx.Client
    dep_id: str
    printer: Printer
    last_seq: int = 0
    reconnects: int = 0
    status: JSONObject | None = None

    def receive(self, ws: MessageStream, remaining: float) -> JSONObject:
        """The next message; after WS_QUIET_SECONDS of silence, the status read over HTTP instead."""
        try:
            raw = ws.recv(timeout=min(remaining, WS_QUIET_SECONDS))
        except TimeoutError:
            self.status = get_deployment(self.client, self.dep_id)  # quiet: make sure nothing was missed
            return {"type": "status", **self.status}
        loaded = json.loads(raw)
        return loaded if isinstance(loaded, dict) else {}

    def show_event(self, message: JSONObject) -> None:
        """Prints an event, unless it was shown before a reconnection."""
        seq = message.get("seq")
        if isinstance(seq, int):
            if seq <= self.last_seq:
                return  # already shown before a reconnect
            self.last_seq = seq
        self.printer.event({k: v for k, v in message.items() if k != "type"})

    def show_status(self, message: JSONObject, first: bool) -> int | None:
        """Prints the status; returns the exit code it means once the deployment has finished."""
        if self.status is None or first:
            # Events committed before the WebSocket subscribed (between the POST and now, or while
            # reconnecting) are read once over HTTP; the seq check in show_event drops any the WebSocket
            # sends again.
            for event in list_events(self.client, self.dep_id, self.last_seq):
                if isinstance(event.get("seq"), int) and event["seq"] > self.last_seq:
                    self.last_seq = event["seq"]
                    self.printer.event(event)
        self.status = {k: v for k, v in message.items() if k != "type"}
        self.printer.status(self.status)
        code = terminal_exit(self.status)
        if code is not None:
            self.printer.done(self.dep_id, self.status)
        return code


def ws_follow(
    client: httpx.Client, session: Session, dep_id: str, deadline: float, timeout: float, printer: Printer
) -> int:
    """Follows the deployment's WebSocket until it finishes; reconnects with after_seq when dropped."""
    runtime = session.runtime
    headers = {"Authorization": f"Bearer {session.token}"} if session.token else {}
    follower = WebSocketFollower(client, dep_id, printer)
    while True:
        url = websocket_url(client, dep_id, follower.last_seq)
        try:
            with runtime.websocket(url, headers) as ws:
                first = True
                while True:
                    remaining = deadline - runtime.clock()
                    if remaining <= 0:
                        raise _timed_out(dep_id, timeout, follower.status)
                    message = follower.receive(ws, remaining)
                    follower.reconnects = 0
                    if message.get("type") == "event":
                        follower.show_event(message)
                    elif message.get("type") == "status":
                        code = follower.show_status(message, first)
                        first = False
                        if code is not None:
                            return code
        except CtlError:
            raise
        except Exception as exc:  # handshake refused, connection lost, DNS, a proxy without WebSockets
            if follower.status is None and follower.reconnects == 0 and follower.last_seq == 0:
                raise WebSocketUnavailableError(str(exc) or type(exc).__name__) from exc
            follower.reconnects += 1
            if follower.reconnects > MAX_WS_RECONNECTS:
                raise WebSocketUnavailableError(str(exc) or type(exc).__name__) from exc
            runtime.sleep(min(2.0 * follower.reconnects, 10.0))


def follow(client: httpx.Client, session: Session, dep_id: str, timeout: float, interval: float) -> int:
    """Follows a deployment until it finishes (WebSocket, else polling); returns the exit code it means."""
    runtime = session.runtime
    deadline = runtime.clock() + timeout
    printer = Printer(session.output, session.live)
    try:
        return ws_follow(client, session, dep_id, deadline, timeout, printer)
    except WebSocketUnavailableError as exc:
        typer.echo(f"warning: no WebSocket ({exc}); polling the status every {interval:g} s", err=True)
    return poll_follow(client, dep_id, runtime, deadline, timeout, interval, printer)


# --- command plumbing ------------------------------------------------------------------------------------


@contextmanager
def reported() -> Iterator[None]:
    """Turns CtlError into its lines on stderr and its exit code."""
    try:
        yield
    except CtlError as exc:
        for line in exc.lines:
            typer.echo(line, err=True)
        raise typer.Exit(exc.code) from None


@contextmanager
def session_client(ctx: typer.Context) -> Iterator[tuple[httpx.Client, Session]]:
    """The API client for this invocation (closed afterwards), with errors reported."""
    session: Session = ctx.obj
    with reported(), make_client(session) as client:
        yield client, session


def parse_stages(text: str) -> list[int | float]:
    """'10,25,50' → [10, 25, 50]."""
    stages: list[int | float] = []
    for part in text.split(","):
        try:
            value = float(part.strip())
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise CtlError([f"error: --stages: {part.strip()!r} is not a number"], EXIT_USAGE)
        stages.append(int(value) if value.is_integer() else value)
    return stages


def parse_match(text: str) -> JSONObject:
    """'header:X-Beta=1' → {"header": "X-Beta", "equals": "1"}; 'cookie:plan~^pro' → {"cookie": "plan",
    "regex": "^pro"}. A name never holds '=' or '~' (canaryd refuses them), so the first one splits."""
    source, _, rest = text.partition(":")
    cut = min((i for i in (rest.find("="), rest.find("~")) if i >= 0), default=-1)
    if source not in ("header", "cookie") or cut <= 0:
        raise CtlError(
            [f"error: --match {text!r}: write header:NAME=VALUE, cookie:NAME=VALUE, or ~REGEX for =VALUE"],
            EXIT_USAGE,
        )
    return {source: rest[:cut], "equals" if rest[cut] == "=" else "regex": rest[cut + 1 :]}


def deployment_body(
    version: str,
    stages: str | None,
    stage_duration: int | None,
    config_json: str | None,
    strategy: str | None = None,
    match: list[str] | None = None,
    mirror: int | None = None,
    mirror_then: str | None = None,
) -> JSONObject:
    """The POST body: --config-json, overridden by --stages, --stage-duration, --match (which implies
    --strategy ab unless another strategy is named; canaryd refuses a mismatch) and --mirror/--mirror-then
    (which imply --strategy mirror); a `rolling`, `mirror` or `blue_green` block in --config-json implies its strategy
    likewise."""
    config: JSONObject = {}
    if config_json:
        try:
            loaded = json.loads(config_json)
        except ValueError as exc:
            raise CtlError([f"error: --config-json is not valid JSON: {exc}"], EXIT_USAGE) from None
        if not isinstance(loaded, dict):
            raise CtlError(["error: --config-json must be a JSON object"], EXIT_USAGE)
        config.update(loaded)
    if stages is not None:
        config["stages"] = parse_stages(stages)
    if stage_duration is not None:
        config["stage_duration"] = stage_duration
    if match:
        config["ab"] = {"match": [parse_match(m) for m in match]}
    if mirror is not None or mirror_then is not None:
        given = config.get("mirror")
        block: JSONObject = dict(given) if isinstance(given, dict) else {}
        if mirror is not None:
            block["percent"] = mirror
        if mirror_then is not None:
            block["then"] = mirror_then
        config["mirror"] = block
    implied = next((name for name in ("ab", "mirror", "rolling", "blue_green") if name in config), "canary")
    chosen = strategy or implied
    return {"version": version, "strategy": chosen, "config": config}


def report_action(session: Session, dep_id: str, action: str, result: Any) -> None:
    """What a manual action prints: the request, and the state it left if the server said."""
    if session.output == "json":
        echo_json(result if result is not None else {"deployment": dep_id, "action": action})
        return
    line = f"{action} accepted for deployment {dep_id}"
    if isinstance(result, dict) and (result.get("canary_status") or result.get("status")):
        line += f": {progress_line(result).strip()}"
    typer.echo(line)


def wants_json(ctx: typer.Context, flag: bool) -> bool:
    session: Session = ctx.obj
    return flag or session.output == "json"


# --- the commands ----------------------------------------------------------------------------------------

app = typer.Typer(
    name="canaryctl",
    help="Drive canaryd canary deployments from CI or a terminal: start, follow, list, inspect, promote, "
    "roll back. Exit codes: 0 completed/accepted, 1 rolled back, 2 usage or connection error, 3 failed, "
    "4 refused by canaryd (HTTP error), 5 timed out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DepId = Annotated[str, typer.Argument(help="Deployment id.", show_default=False)]
AppRef = Annotated[str, typer.Argument(help="Application id or name.", show_default=False)]
JsonFlag = Annotated[bool, typer.Option("--json", help="Same as --output json.")]
Timeout = Annotated[float, typer.Option("--timeout", min=0, help="Give up waiting after this many seconds.")]
Interval = Annotated[
    float, typer.Option("--interval", min=0.05, help="Seconds between status polls (without WebSocket).")
]


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[
        str, typer.Option("--url", envvar="CANARYD_URL", help="canaryd's base URL.")
    ] = DEFAULT_URL,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="CANARYD_TOKEN", help="API token (Bearer).", show_default=False),
    ] = None,
    output: Annotated[
        str,
        typer.Option("--output", "-o", help="text, or json (one JSON document; JSON lines when following)."),
    ] = "text",
) -> None:
    """Global options, shared by every command."""
    if output not in ("text", "json"):
        typer.echo(f"error: --output must be text or json, not {output!r}", err=True)
        raise typer.Exit(EXIT_USAGE)
    runtime = ctx.obj if isinstance(ctx.obj, Runtime) else Runtime()
    ctx.obj = Session(url=url, token=token, runtime=runtime, output="json" if output == "json" else "text")


# The options of `deploy`.
Version = Annotated[str, typer.Argument(help="Version to deploy.", show_default=False)]
Stages = Annotated[
    str | None, typer.Option("--stages", help="Traffic percentages per stage, e.g. 10,25,50,75,100.")
]
StageDuration = Annotated[int | None, typer.Option("--stage-duration", help="Seconds each stage is held.")]
ConfigJson = Annotated[str | None, typer.Option("--config-json", help="Deployment config as a JSON object.")]
StrategyOption = Annotated[
    str | None,
    typer.Option(
        "--strategy",
        help="canary (the default), ab, rolling, mirror or blue_green.",
    ),
]
MatchRules = Annotated[
    list[str] | None,
    typer.Option(
        "--match",
        help="A/B rule, repeatable (any matches): header:X-Beta=1, cookie:plan=pro, "
        "header:User-Agent~Mobile (~ for a regex). Implies --strategy ab.",
    ),
]
MirrorPercent = Annotated[
    int | None,
    typer.Option(
        "--mirror",
        help="Mirror test: percent of requests copied to the canary (clients get stable). Implies --strategy mirror.",
    ),
]
MirrorThen = Annotated[
    str | None,
    typer.Option(
        "--mirror-then",
        help="After a mirror test that passed: canary (the default), stop, or blue_green (the copies go to "
        "green instances beside blue on the application's green_port, then a blue-green test and switch).",
    ),
]
IdempotencyKey = Annotated[
    str | None, typer.Option("--idempotency-key", help="Sent as Idempotency-Key: a retry makes no twin.")
]
Wait = Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the deployment until it finishes.")]


def report_created(session: Session, version: str, created: JSONObject, new: bool) -> str:
    """Prints what `deploy` started (or found already started for its Idempotency-Key); returns its id."""
    if created.get("id") is None:
        raise CtlError(["error: canaryd created a deployment but did not say its id"], EXIT_API)
    dep_id = str(created["id"])
    if session.output == "json":
        typer.echo(json.dumps({"type": "created" if new else "replayed", **created}, sort_keys=True))
    elif new:
        typer.echo(f"deployment {dep_id} of {version} created: {phase(created)}")
    else:
        typer.echo(
            f"deployment {dep_id} of {version} already exists for this Idempotency-Key "
            f"(nothing new started): {phase(created)}"
        )
    return dep_id


@app.command()
def deploy(
    ctx: typer.Context,
    app_ref: AppRef,
    version: Version,
    stages: Stages = None,
    stage_duration: StageDuration = None,
    config_json: ConfigJson = None,
    strategy: StrategyOption = None,
    match: MatchRules = None,
    mirror: MirrorPercent = None,
    mirror_then: MirrorThen = None,
    idempotency_key: IdempotencyKey = None,
    wait: Wait = True,
    timeout: Timeout = 3600.0,
    interval: Interval = 2.0,
    as_json: JsonFlag = False,
) -> None:
    """Start a deployment of VERSION (a canary, or an A/B test with --match); with --wait (the default)
    exit 0 only if it completes."""
    with session_client(ctx) as (client, session):
        if as_json:
            session = Session(session.url, session.token, session.runtime, "json")
        body = deployment_body(
            version, stages, stage_duration, config_json, strategy, match, mirror, mirror_then
        )
        app_id = resolve_application(client, app_ref)
        created, new = create_deployment(client, app_id, body, idempotency_key)
        dep_id = report_created(session, version, created, new)
        if wait:
            raise typer.Exit(follow(client, session, dep_id, timeout, interval))


@app.command()
def status(ctx: typer.Context, dep_id: DepId, as_json: JsonFlag = False) -> None:
    """Show a deployment's status."""
    with session_client(ctx) as (client, _):
        result = get_deployment(client, dep_id)
    if wants_json(ctx, as_json):
        echo_json(result)
    else:
        typer.echo("\n".join(status_lines(result)))


@app.command()
def events(ctx: typer.Context, dep_id: DepId, as_json: JsonFlag = False) -> None:
    """Show a deployment's history, oldest first."""
    with session_client(ctx) as (client, _):
        result = list_events(client, dep_id)
    if wants_json(ctx, as_json):
        echo_json(result)
        return
    for event in result:
        typer.echo(event_line(event))


@app.command()
def watch(ctx: typer.Context, dep_id: DepId, timeout: Timeout = 3600.0, interval: Interval = 2.0) -> None:
    """Follow a deployment until it finishes; exit 0 only if it completes (see the exit codes)."""
    with session_client(ctx) as (client, session):
        raise typer.Exit(follow(client, session, dep_id, timeout, interval))


ListWhat = Literal["applications", "deployments", "servers"]


@app.command("list")
def list_cmd(
    ctx: typer.Context,
    what: Annotated[str, typer.Argument(help="applications, deployments or servers.", show_default=False)],
    application: Annotated[
        str | None, typer.Option("--application", "-a", help="Deployments of this application (id or name).")
    ] = None,
    state: Annotated[
        str | None, typer.Option("--status", help="Deployments in this canary_status (e.g. monitoring).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500, help="At most this many rows.")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """List applications, deployments (newest first) or servers."""
    if what not in ("applications", "deployments", "servers"):
        typer.echo(f"error: can list applications, deployments or servers, not {what!r}", err=True)
        raise typer.Exit(EXIT_USAGE)
    with session_client(ctx) as (client, _):
        if what == "deployments":
            params: dict[str, Any] = {"limit": limit}
            if application is not None:
                params["application_id"] = resolve_application(client, application)
            if state is not None:
                params["status"] = state
            rows = list_of(client, "/deployments", params)
        else:
            rows = list_of(client, f"/{what}", {"limit": limit})
    if wants_json(ctx, as_json):
        echo_json(rows)
        return
    for row in rows:
        typer.echo(list_line(what, row))


def list_line(what: str, r: JSONObject) -> str:
    g = r.get
    if what == "applications":
        proxy = r["proxy"] if isinstance(r.get("proxy"), dict) else {}
        return (
            f"{fmt(g('id')):>4}  {fmt(g('name')):<20} {fmt(g('current_version')):<14} "
            f"{fmt(proxy.get('kind')):<8} servers {fmt(g('server_ids'))}"
        )
    if what == "servers":
        return f"{fmt(g('id')):>4}  {fmt(g('name')):<20} {fmt(g('host')):<24} {fmt(g('transport'))}"
    return (
        f"{fmt(g('id')):>4}  app {fmt(g('application_id')):<4} {fmt(g('previous_version'))} → "
        f"{fmt(g('version')):<12} {phase(r):<12} stage {fmt(g('current_stage'))}/{fmt(g('total_stages'))}  "
        f"canary {pct(g('current_traffic_percentage'))}  {fmt(g('created_at'))}"
    )


apps = typer.Typer(help="Show an application, or set its default deployment settings.", no_args_is_help=True)
app.add_typer(apps, name="app")


def read_defaults(path: str) -> JSONObject:
    """The JSON object in a file ('-': standard input)."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CtlError([f"error: --defaults-file: {exc.strerror or exc}: {path}"], EXIT_USAGE) from None
    try:
        loaded = json.loads(text)
    except ValueError as exc:
        raise CtlError([f"error: --defaults-file {path} is not valid JSON: {exc}"], EXIT_USAGE) from None
    if not isinstance(loaded, dict):
        raise CtlError([f"error: --defaults-file {path} must hold a JSON object"], EXIT_USAGE)
    return loaded


def application_lines(a: JSONObject) -> list[str]:
    g = a.get
    defaults = g("deployment_defaults") or {}
    lines = [
        f"application {fmt(g('name'))} (id {fmt(g('id'))}) at {fmt(g('current_version'))}, "
        f"servers {fmt(g('server_ids'))}",
        "deployment defaults:"
        + ("" if defaults else " none (every deployment uses its own or the built-in)"),
    ]
    lines += [f"  {key}: {json.dumps(defaults[key])}" for key in sorted(defaults)]
    return lines


@apps.command("show")
def app_show(ctx: typer.Context, app_ref: AppRef, as_json: JsonFlag = False) -> None:
    """Show an application and its default deployment settings."""
    with session_client(ctx) as (client, _):
        result = _expect_object(call(client, "GET", f"/applications/{resolve_application(client, app_ref)}"))
    if wants_json(ctx, as_json):
        echo_json(result)
    else:
        typer.echo("\n".join(application_lines(result)))


@apps.command("update")
def app_update(
    ctx: typer.Context,
    app_ref: AppRef,
    defaults_file: Annotated[
        str | None,
        typer.Option(
            "--defaults-file",
            help="JSON object of default deployment settings (any deployment config fields; '-' reads "
            "standard input). Replaces the application's defaults whole; deployments override them.",
        ),
    ] = None,
    clear_defaults: Annotated[
        bool, typer.Option("--clear-defaults", help="Remove the application's default settings.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Change an application's default deployment settings (deployments already started keep theirs)."""
    if (defaults_file is None) == (not clear_defaults):
        typer.echo("error: give --defaults-file or --clear-defaults", err=True)
        raise typer.Exit(EXIT_USAGE)
    with session_client(ctx) as (client, _):
        defaults = read_defaults(defaults_file) if defaults_file is not None else {}
        app_id = resolve_application(client, app_ref)
        body = {"deployment_defaults": defaults}
        result = _expect_object(call(client, "PATCH", f"/applications/{app_id}", json=body))
    if wants_json(ctx, as_json):
        echo_json(result)
    else:
        typer.echo("\n".join(application_lines(result)))


@app.command()
def promote(
    ctx: typer.Context,
    dep_id: DepId,
    next_stage: Annotated[
        bool, typer.Option("--next", help="Skip only the current stage, not all remaining ones.")
    ] = False,
) -> None:
    """Promote now: skip the remaining stages (or, with --next, just the current one)."""
    with session_client(ctx) as (client, session):
        result = act(client, dep_id, "promote", {"to": "next"} if next_stage else {})
    report_action(session, dep_id, "promote", result)


@app.command()
def rollback(
    ctx: typer.Context,
    dep_id: DepId,
    reason: Annotated[str | None, typer.Option("--reason", help="Why, for the history.")] = None,
) -> None:
    """Roll a deployment back."""
    with session_client(ctx) as (client, session):
        result = act(client, dep_id, "rollback", {"reason": reason} if reason else {})
    report_action(session, dep_id, "rollback", result)


@app.command()
def pause(ctx: typer.Context, dep_id: DepId) -> None:
    """Pause a deployment at its current stage."""
    with session_client(ctx) as (client, session):
        result = act(client, dep_id, "pause", {})
    report_action(session, dep_id, "pause", result)


@app.command()
def resume(ctx: typer.Context, dep_id: DepId) -> None:
    """Resume a paused deployment."""
    with session_client(ctx) as (client, session):
        result = act(client, dep_id, "resume", {})
    report_action(session, dep_id, "resume", result)


if __name__ == "__main__":
    app()
