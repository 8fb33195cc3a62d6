"""`canaryctl`: the CI client of canaryd's HTTP API (`/api/v1`, Bearer token).

Exit codes, so a pipeline can gate on them:
  0  the request was accepted, or the deployment completed
  1  the server refused the request, or the deployment was rolled back or failed
  2  usage error, canaryd unreachable, or a wait that timed out

Every HTTP call goes through functions that take an `httpx.Client`; the client is built from the global
options and an optional `Runtime` passed as the Click context object, so tests swap the transport
(`httpx.MockTransport`), the sleep and the clock without monkeypatching.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
import typer

DEFAULT_URL = "http://127.0.0.1:8080"
API_PREFIX = "/api/v1"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: canary_status (or status) values after which nothing more happens, with the exit code each one means.
TERMINAL_EXIT = {"completed": EXIT_OK, "rolled_back": EXIT_FAILED, "failed": EXIT_FAILED}
#: Polling survives this many consecutive transient failures (connection errors, 5xx) before giving up.
MAX_POLL_FAILURES = 5

JSONObject = dict[str, Any]


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


@dataclass(frozen=True)
class Runtime:
    """What canaryctl takes from the outside world; tests pass their own as the context object."""

    transport: httpx.BaseTransport | None = None
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic


@dataclass(frozen=True)
class Session:
    """The global options of one invocation."""

    url: str
    token: str | None
    runtime: Runtime = field(default_factory=Runtime)


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


def call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    """Sends one request; returns the decoded JSON body (None when empty) or raises CtlError."""
    try:
        response = client.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        reason = str(exc) or type(exc).__name__
        where = str(client.base_url).rstrip("/")
        raise CtlError([f"error: cannot reach canaryd at {where}: {reason}"], EXIT_USAGE) from exc
    if response.is_error:
        raise CtlError(error_lines(response), EXIT_FAILED, response.status_code)
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError as exc:
        raise CtlError([f"error: canaryd answered {method} {path} with non-JSON"], EXIT_FAILED) from exc


def create_deployment(
    client: httpx.Client, app_id: str, body: JSONObject, idempotency_key: str | None = None
) -> JSONObject:
    """POST /applications/{id}/deployments."""
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    result = call(client, "POST", f"/applications/{app_id}/deployments", json=body, headers=headers)
    return _expect_object(result)


def get_deployment(client: httpx.Client, dep_id: str) -> JSONObject:
    """GET /deployments/{id}: the status object."""
    return _expect_object(call(client, "GET", f"/deployments/{dep_id}"))


def list_events(client: httpx.Client, dep_id: str) -> list[JSONObject]:
    """GET /deployments/{id}/events, oldest first."""
    result = call(client, "GET", f"/deployments/{dep_id}/events")
    if isinstance(result, dict) and isinstance(result.get("events"), list):
        result = result["events"]
    if not isinstance(result, list):
        raise CtlError(["error: canaryd answered the events request with something other than a list"], 1)
    return [e for e in result if isinstance(e, dict)]


def act(client: httpx.Client, dep_id: str, action: str, body: JSONObject) -> Any:
    """POST /deployments/{id}/{promote|rollback|pause|resume}."""
    return call(client, "POST", f"/deployments/{dep_id}/{action}", json=body)


def _expect_object(result: Any) -> JSONObject:
    if not isinstance(result, dict):
        raise CtlError(["error: canaryd answered with something other than a JSON object"], EXIT_FAILED)
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
    """What must change for `--wait` to print a new line."""
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
    """The exit code a finished deployment means, or None while it is still going."""
    for key in ("canary_status", "status"):
        value = status.get(key)
        if isinstance(value, str) and value in TERMINAL_EXIT:
            return TERMINAL_EXIT[value]
    return None


def status_lines(s: JSONObject) -> list[str]:
    """The status object as a short human report."""
    g = s.get
    return [
        f"deployment    {fmt(g('id'))}  (application {fmt(g('application_id'))}, "
        f"version {fmt(g('version'))}, strategy {fmt(g('strategy'))})",
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


def echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True))


# --- following a deployment ------------------------------------------------------------------------------


def _poll(client: httpx.Client, dep_id: str, failures: int) -> tuple[JSONObject | None, int]:
    """One status poll that tolerates a few transient failures in a row."""
    try:
        return get_deployment(client, dep_id), 0
    except CtlError as exc:
        if not exc.transient or failures + 1 >= MAX_POLL_FAILURES:
            raise
        typer.echo(f"warning: {exc.lines[-1]} (retrying)", err=True)
        return None, failures + 1


def follow(client: httpx.Client, dep_id: str, runtime: Runtime, timeout: float, interval: float) -> int:
    """Polls a deployment until it finishes, printing every change; returns the exit code it means."""
    deadline = runtime.clock() + timeout
    last: tuple[str, Any, Any] | None = None
    failures = 0
    while True:
        status, failures = _poll(client, dep_id, failures)
        if status is not None:
            if progress_key(status) != last:
                last = progress_key(status)
                typer.echo(progress_line(status))
            code = terminal_exit(status)
            if code is not None:
                typer.echo(f"deployment {dep_id} {phase(status)}")
                return code
        remaining = deadline - runtime.clock()
        if remaining <= 0:
            state = phase(status) if status is not None else "unknown"
            raise CtlError(
                [f"error: deployment {dep_id} did not finish within {timeout:g} s (last state: {state})"],
                EXIT_USAGE,
            )
        runtime.sleep(min(interval, remaining))


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
def session_client(ctx: typer.Context) -> Iterator[tuple[httpx.Client, Runtime]]:
    """The API client for this invocation (closed afterwards), with errors reported."""
    session: Session = ctx.obj
    with reported(), make_client(session) as client:
        yield client, session.runtime


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


def deployment_body(
    version: str, stages: str | None, stage_duration: int | None, config_json: str | None
) -> JSONObject:
    """The POST body: --config-json, overridden by --stages and --stage-duration."""
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
    return {"version": version, "strategy": "canary", "config": config}


def report_action(dep_id: str, action: str, result: Any) -> None:
    """What a manual action prints: the request, and the state it left if the server said."""
    line = f"{action} accepted for deployment {dep_id}"
    if isinstance(result, dict) and (result.get("canary_status") or result.get("status")):
        line += f": {progress_line(result).strip()}"
    typer.echo(line)


# --- the commands ----------------------------------------------------------------------------------------

app = typer.Typer(
    name="canaryctl",
    help="Drive canaryd canary deployments from CI: start, follow, inspect, promote, roll back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DepId = Annotated[str, typer.Argument(help="Deployment id.", show_default=False)]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print the raw JSON answer.")]
Timeout = Annotated[float, typer.Option("--timeout", min=0, help="Give up waiting after this many seconds.")]
Interval = Annotated[float, typer.Option("--interval", min=0.05, help="Seconds between status polls.")]


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
) -> None:
    """Global options, shared by every command."""
    runtime = ctx.obj if isinstance(ctx.obj, Runtime) else Runtime()
    ctx.obj = Session(url=url, token=token, runtime=runtime)


@app.command()
def deploy(
    ctx: typer.Context,
    app_id: Annotated[str, typer.Argument(help="Application id.", show_default=False)],
    version: Annotated[str, typer.Argument(help="Version to deploy.", show_default=False)],
    stages: Annotated[
        str | None, typer.Option("--stages", help="Traffic percentages per stage, e.g. 10,25,50,75,100.")
    ] = None,
    stage_duration: Annotated[
        int | None, typer.Option("--stage-duration", help="Seconds each stage is held.")
    ] = None,
    config_json: Annotated[
        str | None, typer.Option("--config-json", help="Deployment config as a JSON object.")
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option("--idempotency-key", help="Sent as Idempotency-Key: a retry makes no twin.")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Follow the deployment until it finishes.")
    ] = True,
    timeout: Timeout = 3600.0,
    interval: Interval = 2.0,
    as_json: JsonFlag = False,
) -> None:
    """Start a canary deployment of VERSION; with --wait, exit 0 only if it completes."""
    with session_client(ctx) as (client, runtime):
        body = deployment_body(version, stages, stage_duration, config_json)
        created = create_deployment(client, app_id, body, idempotency_key)
        if created.get("id") is None:
            raise CtlError(["error: canaryd created a deployment but did not say its id"], EXIT_FAILED)
        dep_id = str(created["id"])
        if as_json:
            echo_json(created)
        else:
            typer.echo(f"deployment {dep_id} of {version} created: {phase(created)}")
        if wait:
            raise typer.Exit(follow(client, dep_id, runtime, timeout, interval))


@app.command()
def status(ctx: typer.Context, dep_id: DepId, as_json: JsonFlag = False) -> None:
    """Show a deployment's status."""
    with session_client(ctx) as (client, _):
        result = get_deployment(client, dep_id)
    if as_json:
        echo_json(result)
    else:
        typer.echo("\n".join(status_lines(result)))


@app.command()
def events(ctx: typer.Context, dep_id: DepId, as_json: JsonFlag = False) -> None:
    """Show a deployment's history, oldest first."""
    with session_client(ctx) as (client, _):
        result = list_events(client, dep_id)
    if as_json:
        echo_json(result)
        return
    for event in result:
        typer.echo(event_line(event))


@app.command()
def watch(ctx: typer.Context, dep_id: DepId, timeout: Timeout = 3600.0, interval: Interval = 2.0) -> None:
    """Follow a deployment until it finishes; exit 0 only if it completes."""
    with session_client(ctx) as (client, runtime):
        raise typer.Exit(follow(client, dep_id, runtime, timeout, interval))


@app.command()
def promote(
    ctx: typer.Context,
    dep_id: DepId,
    next_stage: Annotated[
        bool, typer.Option("--next", help="Skip only the current stage, not all remaining ones.")
    ] = False,
) -> None:
    """Promote now: skip the remaining stages (or, with --next, just the current one)."""
    with session_client(ctx) as (client, _):
        result = act(client, dep_id, "promote", {"to": "next"} if next_stage else {})
    report_action(dep_id, "promote", result)


@app.command()
def rollback(
    ctx: typer.Context,
    dep_id: DepId,
    reason: Annotated[str | None, typer.Option("--reason", help="Why, for the history.")] = None,
) -> None:
    """Roll a deployment back."""
    with session_client(ctx) as (client, _):
        result = act(client, dep_id, "rollback", {"reason": reason} if reason else {})
    report_action(dep_id, "rollback", result)


@app.command()
def pause(ctx: typer.Context, dep_id: DepId) -> None:
    """Pause a deployment at its current stage."""
    with session_client(ctx) as (client, _):
        result = act(client, dep_id, "pause", {})
    report_action(dep_id, "pause", result)


@app.command()
def resume(ctx: typer.Context, dep_id: DepId) -> None:
    """Resume a paused deployment."""
    with session_client(ctx) as (client, _):
        result = act(client, dep_id, "resume", {})
    report_action(dep_id, "resume", result)


if __name__ == "__main__":
    app()
