"""The Traefik adapter.

Traefik cannot run here: no Traefik binary can be installed on these machines. So, plainly:
* every configuration canaryd generates is validated against Traefik v3's published JSON Schema for
  file-provider dynamic configuration (a copy in tests/proxies/traefik_recorded/, from SchemaStore);
* the API and metrics clients are tested against responses written by hand in Traefik's documented formats
  (tests/proxies/traefik_recorded/README.md says where each format comes from), served by
  `httpx.MockTransport` — constructed from the docs, not captured from a live Traefik;
* the HTTP-provider test stands a small *simulated* Traefik (a poller plus the read-only API shape) in for
  the real one. What is real: the local and sshd transports, the files on disk, canaryd's API and database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import jsonschema
import pytest
import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from tests.fixtures.nginx import free_port
from tests.fixtures.stack import make_stack

from canaryd.domain.config import ProxySpec
from canaryd.domain.pool import PoolServer, desired_backends
from canaryd.domain.types import Backend, Cohort, CohortStats, State, bucket_of
from canaryd.proxies.base import ProxyConfigError, RouteTable
from canaryd.proxies.traefik import (
    Counters,
    TraefikProxy,
    check_dynamic_config,
    counters_delta,
    dump_config,
    expected_weights,
    loaded_weights,
    render_traefik,
    service_counters,
    to_cohort_stats,
)
from canaryd.transports.base import Transport
from canaryd.transports.local import LocalTransport

if TYPE_CHECKING:
    from tests.fixtures.sshd import SshServer

    from canaryd.transports.ssh import SshPool

RECORDED = Path(__file__).with_name("traefik_recorded")
SCHEMA = json.loads((RECORDED / "traefik-v3-file-provider.schema.json").read_text())
API = "http://127.0.0.1:8080"
METRICS = "http://127.0.0.1:8082/metrics"
APP = 7
CANARY_ID = 11
STABLE_IDS = (12, 13, 14, 15)


def spec(path: str = "/etc/traefik/dynamic/shop.yml", **extra: Any) -> ProxySpec:
    return ProxySpec.model_validate(
        {
            "kind": "traefik",
            "server_id": 1,
            "config_path": path,
            "reload_command": "true",
            "api_url": API,
            "metrics_url": METRICS,
            **extra,
        }
    )


def table(state: State, percentage: float, generation: int = 3) -> RouteTable:
    """A route table computed by the domain, as the engine would: 1 canary, 4 stable servers."""
    pool = [
        PoolServer(sid, f"127.0.0.{sid}", 8080, "v2" if sid == CANARY_ID else "v1")
        for sid in (CANARY_ID, *STABLE_IDS)
    ]
    backends = desired_backends(state, pool, frozenset({CANARY_ID}), "v2", percentage, None, 1000)
    return RouteTable(APP, "shop", backends, generation)


def validate(config: dict[str, Any]) -> None:
    jsonschema.validate(config, SCHEMA)


STATES = {
    "0%": (State.DEPLOYING, 0.0),
    "10%": (State.MONITORING, 10.0),
    "100%": (State.MONITORING, 100.0),
    "pending": (State.PENDING, 0.0),
}
OPTIONS = {
    "plain": {},
    "sticky": {"sticky": True},
    "router": {"router_rule": "Host(`shop.example.com`) && PathPrefix(`/`)"},
    "forced": {"router_rule": "Host(`shop.example.com`)", "force_header": "X-Canary", "sticky": True},
}


# --- rendering ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("state", STATES)
def test_every_generated_config_matches_traefik_schema(state: str, option: str) -> None:
    """Every state × option renders a configuration that Traefik v3's JSON Schema accepts."""
    config = render_traefik(table(*STATES[state]), spec(**OPTIONS[option]))
    validate(config)
    validate(json.loads(dump_config(config)))


def test_schema_check_is_not_vacuous() -> None:
    """The schema does reject what Traefik would reject (a service of two kinds, an unknown key)."""
    config = render_traefik(table(State.MONITORING, 10.0), spec())
    broken = json.loads(json.dumps(config))
    broken["http"]["services"]["canaryd-app-7"]["loadBalancer"] = {"servers": [{"url": "http://x"}]}
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)
    with pytest.raises(jsonschema.ValidationError):
        validate({**config, "canaryd": {}})


def test_weights_are_the_domain_split_weights() -> None:
    """The weighted service carries the domain's per-server weights; the canary is absent at 0 %."""
    ten = table(State.MONITORING, 10.0)
    config = render_traefik(ten, spec())
    weighted = config["http"]["services"]["canaryd-app-7"]["weighted"]
    got = {s["name"]: s["weight"] for s in weighted["services"]}
    assert got == {f"canaryd-app-7-server-{b.server_id}": b.weight for b in ten.backends}
    canary = sum(b.weight for b in ten.backends if b.cohort == "canary")
    assert canary / sum(got.values()) == pytest.approx(0.10)
    assert config["http"]["services"]["canaryd-app-7-server-11"] == {
        "loadBalancer": {"servers": [{"url": "http://127.0.0.11:8080"}], "passHostHeader": True}
    }
    zero = render_traefik(table(State.DEPLOYING, 0.0), spec())["http"]["services"]
    assert "canaryd-app-7-server-11" not in zero
    assert all(s["name"] != "canaryd-app-7-server-11" for s in zero["canaryd-app-7"]["weighted"]["services"])
    assert "routers" not in render_traefik(ten, spec())["http"]


def test_sticky_cookie_and_forced_routes() -> None:
    """Sticky sets weighted.sticky.cookie; force_header adds always→canary and never→stable routers."""
    config = render_traefik(table(State.MONITORING, 10.0), spec(**OPTIONS["forced"]))
    http = config["http"]
    assert http["services"]["canaryd-app-7"]["weighted"]["sticky"]["cookie"]["name"] == "canaryd_7"
    routers = http["routers"]
    assert routers["canaryd-app-7"] == {"rule": "Host(`shop.example.com`)", "service": "canaryd-app-7"}
    canary = routers["canaryd-app-7-force-canary"]
    assert canary["rule"] == "(Host(`shop.example.com`)) && HeaderRegexp(`X-Canary`, `(?i)^always$`)"
    assert [s["name"] for s in http["services"][canary["service"]]["weighted"]["services"]] == [
        "canaryd-app-7-server-11"
    ]
    stable = routers["canaryd-app-7-force-stable"]
    assert stable["rule"].endswith("HeaderRegexp(`X-Canary`, `(?i)^never$`)")
    assert {s["name"] for s in http["services"][stable["service"]]["weighted"]["services"]} == {
        f"canaryd-app-7-server-{i}" for i in STABLE_IDS
    }
    assert canary["priority"] > len(routers["canaryd-app-7"]["rule"])
    # At 0 % there is no canary to force to: that router is left out, the stable one stays.
    zero = render_traefik(table(State.DEPLOYING, 0.0), spec(**OPTIONS["forced"]))["http"]["routers"]
    assert set(zero) == {"canaryd-app-7", "canaryd-app-7-force-stable"}


def test_written_file_is_yaml_that_traefik_can_read() -> None:
    """The file is JSON, which a YAML parser reads to the same configuration (Traefik reads .yml as YAML)."""
    config = render_traefik(table(State.MONITORING, 10.0), spec(**OPTIONS["forced"]))
    assert yaml.safe_load(dump_config(config)) == config


@pytest.mark.parametrize(
    ("host", "port"),
    [("127.0.0.1\n", 80), ('a"b', 80), ("x y", 80), ("127.0.0.1/evil", 80), ("127.0.0.1", 0)],
)
def test_unsafe_backend_values_are_rejected(host: str, port: int) -> None:
    """A host or port that could carry syntax or nonsense never reaches the file."""
    bad = RouteTable(APP, "shop", (Backend(1, host, port, 1, "stable"),), 1)
    with pytest.raises(ValueError):
        render_traefik(bad, spec())


def test_structural_check_catches_dangling_references() -> None:
    """The in-code check (Traefik has no test command) rejects a weighted child or router target that is missing."""
    config = render_traefik(table(State.MONITORING, 10.0), spec(**OPTIONS["router"]))
    config["http"]["services"].pop("canaryd-app-7-server-12")
    with pytest.raises(ValueError, match="undefined service"):
        check_dynamic_config(config)
    with pytest.raises(ValueError, match="undefined service"):
        check_dynamic_config(
            {
                "http": {
                    "services": {"a": {"loadBalancer": {"servers": [{"url": "http://h:1"}]}}},
                    "routers": {"r": {"rule": "Host(`x`)", "service": "b"}},
                }
            }
        )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"api_url": None}, "api_url"),
        ({"metrics_url": None}, "metrics_url"),
        ({"config_path": "/etc/traefik/dynamic/shop.json"}, "must end in .yml"),
        ({"force_header": "X-Canary"}, "needs router_rule"),
        ({"router_rule": "Host(`a`)) || (PathPrefix(`/`)"}, "unbalanced"),
        ({"router_rule": "Host(`a`) || Evil(`x`)"}, "unexpected text"),
        ({"test_command": "traefik check"}, "no configuration test command"),
    ],
)
def test_proxy_spec_rules_for_traefik(extra: dict[str, Any], message: str) -> None:
    """ProxySpec refuses Traefik settings that could not work, or could break out of the router rule."""
    raw = {
        "kind": "traefik",
        "server_id": 1,
        "config_path": "/etc/traefik/dynamic/shop.yml",
        "reload_command": "true",
        "api_url": API,
        "metrics_url": METRICS,
        **extra,
    }
    with pytest.raises(ValueError, match=message):
        ProxySpec.model_validate(raw)


# --- the API client against recorded responses -------------------------------------------------------------


def recorded(name: str) -> Any:
    return json.loads((RECORDED / name).read_text())


def api_client(answers: list[tuple[int, str]], seen: list[str]) -> httpx.AsyncClient:
    """Serves the recorded files in order (the last one forever), like a Traefik that reloads late."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        status, name = answers[min(len(seen) - 1, len(answers) - 1)]
        return httpx.Response(status, json=recorded(name))

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


def test_loaded_weights_reads_traefik_representation() -> None:
    """The API's weighted-service representation yields child → weight, with any @provider stripped."""
    assert loaded_weights(recorded("service-weighted-10pct.json")) == expected_weights(
        table(State.MONITORING, 10.0)
    )
    assert loaded_weights(recorded("service-weighted-0pct.json")) == expected_weights(
        table(State.DEPLOYING, 0.0)
    )
    assert loaded_weights({"loadBalancer": {"servers": []}}) is None
    assert loaded_weights({"weighted": {"services": [{"name": "a@file"}]}}) == {"a": 1}


async def test_verify_waits_until_traefik_reports_the_new_weights(tmp_path: Path) -> None:
    """verify polls the API through a 404 and the old weights and returns True once the new weights show."""
    seen: list[str] = []
    answers = [
        (404, "service-not-found.json"),
        (200, "service-weighted-0pct.json"),
        (200, "service-weighted-10pct.json"),
    ]
    async with api_client(answers, seen) as http:
        proxy = TraefikProxy(
            LocalTransport(), spec(), "127.0.0.1", http, verify_timeout=5, poll_interval=0.01
        )
        assert await proxy.verify(table(State.MONITORING, 10.0))
    assert len(seen) == 3
    assert seen[0] == f"{API}/api/http/services/canaryd-app-7@file"


async def test_verify_fails_when_the_weights_never_show() -> None:
    """A Traefik that keeps the old weights makes verify return False after its timeout (the engine then
    raises ProxyVerificationError after its retries)."""
    seen: list[str] = []
    async with api_client([(200, "service-weighted-0pct.json")], seen) as http:
        proxy = TraefikProxy(
            LocalTransport(), spec(), "127.0.0.1", http, verify_timeout=0.2, poll_interval=0.02
        )
        assert not await proxy.verify(table(State.MONITORING, 10.0))
        assert not await proxy.check(table(State.MONITORING, 10.0))
    assert len(seen) >= 3


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("service-weighted-10pct.json", {}, True),
        ("service-weighted-10pct-sticky.json", {"sticky": True}, True),
        ("service-weighted-10pct.json", {"sticky": True}, False),  # sticky not loaded yet
        ("service-weighted-10pct-sticky.json", {}, False),  # sticky still loaded
        ("service-weighted-10pct-disabled.json", {}, False),  # Traefik disabled the service
    ],
)
async def test_check_compares_weights_stickiness_and_status(
    name: str, options: dict[str, Any], expected: bool
) -> None:
    """check() is True only when weights, the sticky cookie and the service status all match."""
    async with api_client([(200, name)], []) as http:
        proxy = TraefikProxy(LocalTransport(), spec(**options), "127.0.0.1", http)
        assert await proxy.check(table(State.MONITORING, 10.0)) is expected


async def test_http_provider_asks_for_the_http_service() -> None:
    """With provider 'http' the API is asked for `canaryd-app-<id>@http`."""
    seen: list[str] = []
    async with api_client([(200, "service-weighted-10pct-http.json")], seen) as http:
        proxy = TraefikProxy(LocalTransport(), spec("/var/lib/canaryd/shop.json", provider="http"), "h", http)
        assert await proxy.check(table(State.MONITORING, 10.0))
    assert seen == [f"{API}/api/http/services/canaryd-app-7@http"]


# --- metrics -----------------------------------------------------------------------------------------------


def metrics_text(name: str) -> str:
    return (RECORDED / name).read_text()


def test_service_counters_sum_codes_and_ignore_other_services() -> None:
    """Counters are per server service of this app, summed over codes; other series are ignored."""
    now = service_counters(metrics_text("metrics-t1.txt"), APP)
    assert set(now) == {f"canaryd-app-7-server-{i}" for i in (CANARY_ID, *STABLE_IDS)}
    assert now["canaryd-app-7-server-11"].requests == 150
    assert now["canaryd-app-7-server-11"].errors == 10
    assert now["canaryd-app-7-server-13"].buckets["5"] == 525


def test_histogram_becomes_upper_edge_latency_buckets() -> None:
    """Each request lands at its Traefik bucket's upper edge; +Inf lands just above the last finite edge."""
    delta = Counters(10, 0, {"0.1": 5, "0.3": 8, "1.2": 8, "5": 9, "+Inf": 10})
    stats = to_cohort_stats(delta)
    assert stats.latency_buckets == {
        bucket_of(100.0): 5,
        bucket_of(300.0): 3,
        bucket_of(5000.0): 1,
        bucket_of(5000.0) + 1: 1,
    }
    assert stats.quantile_ms(0.5) == pytest.approx(100.0, rel=0.05)


def test_counter_reset_counts_from_zero() -> None:
    """A counter lower than the snapshot (Traefik restarted) is taken whole."""
    before = Counters(500, 5, {"+Inf": 500})
    assert counters_delta(Counters(40, 1, {"+Inf": 40}), before) == Counters(40, 1, {"+Inf": 40})
    assert counters_delta(Counters(540, 6, {"+Inf": 540}), before) == Counters(40, 1, {"+Inf": 40})


def metrics_client(scrapes: list[str]) -> httpx.AsyncClient:
    calls = iter(scrapes)

    def handle(request: httpx.Request) -> httpx.Response:
        assert str(request.url) == METRICS
        return httpx.Response(200, text=metrics_text(next(calls)), headers={"content-type": "text/plain"})

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


def cohort_of_factory() -> Callable[[str], Cohort | None]:
    def cohort_of(address: str) -> Cohort | None:
        host = address.rsplit(":", 1)[0]
        if host == f"127.0.0.{CANARY_ID}":
            return "canary"
        return "stable" if host in {f"127.0.0.{i}" for i in STABLE_IDS} else None

    return cohort_of


async def test_read_traffic_reports_deltas_per_cohort(tmp_path: Path) -> None:
    """Between two scrapes: canary +100 (10 errors), stable +900 (9 errors), latency from the histogram; the
    same offset read twice gives the same answer (a tick that did not commit reads again)."""
    s = spec(str(tmp_path / "shop.yml"))
    async with metrics_client(["metrics-t0.txt", "metrics-t1.txt", "metrics-t1.txt"]) as http:
        proxy = TraefikProxy(LocalTransport(), s, "127.0.0.1", http)
        await proxy.apply(table(State.MONITORING, 10.0))
        offset = await proxy.traffic_offset()
        first = await proxy.read_traffic(offset, cohort_of_factory())
        again = await proxy.read_traffic(offset, cohort_of_factory())
    canary, stable = first.cohorts["canary"], first.cohorts["stable"]
    assert (canary.requests, canary.errors) == (100, 10)
    assert (stable.requests, stable.errors) == (900, 9)
    assert canary.latency_buckets == {bucket_of(100.0): 60, bucket_of(300.0): 30, bucket_of(1200.0): 10}
    assert stable.slower_than(1200.0) == 9
    assert first.next_offset > offset and again.next_offset > first.next_offset
    assert again.cohorts["canary"].to_json() == canary.to_json()
    state = json.loads((tmp_path / ".shop.yml.canaryd-traffic.json").read_text())
    assert state["addresses"]["canaryd-app-7-server-11"] == "127.0.0.11:8080"


async def test_unknown_offset_reads_as_no_traffic(tmp_path: Path) -> None:
    """A lost state file never invents traffic: the reading is empty and a new snapshot starts."""
    async with metrics_client(["metrics-t1.txt"]) as http:
        proxy = TraefikProxy(LocalTransport(), spec(str(tmp_path / "shop.yml")), "127.0.0.1", http)
        await proxy.apply(table(State.MONITORING, 10.0))
        reading = await proxy.read_traffic(12345, cohort_of_factory())
    assert reading.cohorts["canary"].requests == 0 and reading.cohorts["stable"].requests == 0
    assert reading.next_offset == 1


# --- the file provider write path through real transports -------------------------------------------------


async def _apply_and_check(transport: Transport, directory: Path) -> None:
    path = directory / "shop.yml"
    async with httpx.AsyncClient() as http:
        proxy = TraefikProxy(transport, spec(str(path)), "127.0.0.1", http)
        ten = table(State.MONITORING, 10.0)
        await proxy.apply(ten)
        written = json.loads(path.read_text())
        validate(written)
        assert loaded_weights(written["http"]["services"]["canaryd-app-7"]) == expected_weights(ten)
        await proxy.apply(table(State.MONITORING, 25.0, generation=4))
        assert json.loads(path.read_text()) == render_traefik(table(State.MONITORING, 25.0), spec())
        # A failing reload_command puts the previous file back.
        failing = TraefikProxy(transport, spec(str(path), reload_command="false"), "127.0.0.1", http)
        before = path.read_bytes()
        with pytest.raises(ProxyConfigError, match="reload_command failed"):
            await failing.apply(table(State.MONITORING, 50.0, generation=5))
        assert path.read_bytes() == before
    # Nothing that Traefik's directory watch would read is left behind.
    assert sorted(p.name for p in directory.iterdir() if p.suffix in (".yml", ".yaml", ".toml")) == [
        "shop.yml"
    ]
    assert not [p for p in directory.iterdir() if "canaryd-new" in p.name]


async def test_file_provider_write_through_local_transport(tmp_path: Path) -> None:
    """apply writes a schema-valid file atomically through the real local transport and restores on failure."""
    await _apply_and_check(LocalTransport(), tmp_path)


async def test_file_provider_write_through_sshd(tmp_path: Path, ssh_pool: SshPool, sshd: SshServer) -> None:
    """The same through a real sshd on loopback."""
    tmp_path.chmod(0o777)
    await _apply_and_check(ssh_pool.transport(sshd.host, sshd.port, sshd.user), tmp_path)


# --- the HTTP provider endpoint through the real API -------------------------------------------------------


@contextlib.asynccontextmanager
async def simulated_traefik(endpoint: str, token: str) -> AsyncIterator[str]:
    """A stand-in for Traefik (which cannot run here): polls `endpoint` with the bearer token like its HTTP
    provider, and answers `/api/http/services/<name>@http` in the API's documented shape."""
    loaded: dict[str, Any] = {}

    async def poll() -> None:
        async with httpx.AsyncClient() as client:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    r = await client.get(endpoint, headers={"Authorization": f"Bearer {token}"})
                    if r.status_code == 200:
                        loaded.update(r.json()["http"]["services"])
                await asyncio.sleep(0.05)

    async def service(request: Request) -> JSONResponse:
        name, _, provider = request.path_params["name"].partition("@")
        if provider != "http" or name not in loaded:
            return JSONResponse({"message": f"service not found: {name}@{provider}"}, status_code=404)
        kind = next(iter(loaded[name]))
        body = {
            **loaded[name],
            "status": "enabled",
            "name": f"{name}@http",
            "provider": "http",
            "type": kind.lower(),
        }
        return JSONResponse(body)

    port = free_port()
    app = Starlette(routes=[Route("/api/http/services/{name}", service)])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    tasks = [asyncio.create_task(server.serve()), asyncio.create_task(poll())]
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        tasks[1].cancel()
        server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_http_provider_endpoint_through_the_real_api(tmp_path: Path, sqlite_url: str) -> None:
    """GET /api/v1/traefik/<id>/config on the real API: schema-valid configuration for a read token (401
    without, 404 for an unknown app); a change applied by TraefikProxy is verified through a simulated Traefik
    that polls that endpoint like the HTTP provider does."""
    async with make_stack(tmp_path, sqlite_url, servers=2) as stack:
        r = await stack.api.post("/tokens", json={"name": "traefik", "scope": "read"})
        assert r.status_code == 201, r.text
        auth = {"Authorization": f"Bearer {r.json()['token']}"}
        ids = []
        for i, host in enumerate(stack.hosts):
            r = await stack.api.post("/servers", json={"name": f"s{i}", "host": host, "transport": "local"})
            ids.append(r.json()["id"])
        r = await stack.api.post(
            "/servers", json={"name": "traefik", "host": "127.0.0.1", "transport": "local"}
        )
        proxy_id = r.json()["id"]
        published = tmp_path / "published" / "shop.json"
        published.parent.mkdir()
        token = auth["Authorization"].removeprefix("Bearer ")
        # A fresh database: the application registered below gets id 1, so the simulated Traefik can poll
        # its endpoint from the start, as a real one configured for it would.
        app_id = 1
        endpoint = f"{stack.base}/api/v1/traefik/{app_id}/config"
        async with simulated_traefik(endpoint, token) as api, httpx.AsyncClient() as client:
            proxy_spec = {
                "kind": "traefik",
                "server_id": proxy_id,
                "config_path": str(published),
                "reload_command": "true",
                "provider": "http",
                "api_url": api,
                "metrics_url": f"{api}/metrics",
                "sticky": True,
            }
            r = await stack.api.post(
                "/applications",
                json={
                    "name": "shop",
                    "port": stack.app_port,
                    "server_ids": ids,
                    "current_version": "v1",
                    "deploy_command": "true",
                    "proxy": proxy_spec,
                },
            )
            assert r.status_code == 201, r.text
            assert r.json()["id"] == app_id and r.json()["proxy_generation"] == 1
            first = await client.get(endpoint, headers=auth)
            assert first.status_code == 200, first.text
            validate(first.json())
            assert loaded_weights(first.json()["http"]["services"][f"canaryd-app-{app_id}"]) == {
                f"canaryd-app-{app_id}-server-{sid}": 1 for sid in ids
            }
            assert (await client.get(endpoint)).status_code == 401
            missing = await client.get(f"{stack.base}/api/v1/traefik/{app_id + 99}/config", headers=auth)
            assert missing.status_code == 404

            s = ProxySpec.model_validate(proxy_spec)
            canary = {ids[0]}
            split = desired_backends(
                State.MONITORING,
                [
                    PoolServer(sid, h, stack.app_port, "v2" if sid in canary else "v1")
                    for sid, h in zip(ids, stack.hosts, strict=True)
                ],
                frozenset(canary),
                "v2",
                25.0,
                None,
                1000,
            )
            change = RouteTable(app_id, "shop", split, 2)
            proxy = TraefikProxy(
                LocalTransport(), s, "127.0.0.1", client, verify_timeout=10, poll_interval=0.05
            )
            assert not await proxy.check(change)
            await proxy.apply(change)
            assert await proxy.verify(change)
            served = (await client.get(endpoint, headers=auth)).json()
            validate(served)
            assert loaded_weights(served["http"]["services"][f"canaryd-app-{app_id}"]) == expected_weights(
                change
            )


def test_cohort_stats_merge_is_what_the_engine_expects() -> None:
    """to_cohort_stats returns plain CohortStats that merge with access-log readings."""
    merged = CohortStats(1, 0, {bucket_of(50.0): 1}).merge(
        to_cohort_stats(Counters(2, 1, {"0.1": 2, "+Inf": 2}))
    )
    assert (merged.requests, merged.errors, sum(merged.latency_buckets.values())) == (3, 1, 3)
