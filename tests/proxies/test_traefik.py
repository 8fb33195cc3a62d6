"""The Traefik adapter's pure parts: every configuration it renders checked against Traefik v3's published
JSON Schema (a copy in tests/proxies/traefik_recorded/, from SchemaStore), the structural check, the parsing of
Traefik's API and metrics formats, and the file write path through the local and SSH transports.

Everything a live Traefik can show (loading, splitting, forcing, stickiness, metrics, both providers,
restarts) is tested against the real binary in test_traefik_live.py; the recorded responses remain for
the cases a live run cannot produce on purpose (a disabled service, Traefik's default bucket layout).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import jsonschema
import pytest
import yaml

from canaryd.domain.config import ProxySpec
from canaryd.domain.pool import PoolServer, desired_backends
from canaryd.domain.types import Backend, Cohort, CohortStats, State, bucket_of
from canaryd.proxies.base import ProxyConfigError, RouteTable
from canaryd.proxies.traefik import (
    TraefikCounters,
    TraefikProxy,
    check_dynamic_config,
    counters_delta,
    dump_config,
    expected_weights,
    loaded_weights,
    render_traefik,
    serves,
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


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("service-weighted-10pct.json", {}, True),
        ("service-weighted-10pct-sticky.json", {"sticky": True}, True),
        ("service-weighted-10pct.json", {"sticky": True}, False),  # sticky not loaded yet
        ("service-weighted-10pct-sticky.json", {}, False),  # sticky still loaded
        ("service-weighted-10pct-disabled.json", {}, False),  # Traefik disabled the service
        ("service-weighted-0pct.json", {}, False),  # the old weights
    ],
)
def test_serves_compares_weights_stickiness_and_status(
    name: str, options: dict[str, Any], expected: bool
) -> None:
    """The weighted service matches only with its weights, its sticky cookie and status `enabled`. (A
    disabled service is hard to make a live Traefik report on purpose; the rest is also shown live in
    test_traefik_live.py.)"""
    assert serves(recorded(name), table(State.MONITORING, 10.0), spec(**options)) is expected


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
    delta = TraefikCounters(10, 0, {"0.1": 5, "0.3": 8, "1.2": 8, "5": 9, "+Inf": 10})
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
    before = TraefikCounters(500, 5, {"+Inf": 500})
    assert counters_delta(TraefikCounters(40, 1, {"+Inf": 40}), before) == TraefikCounters(
        40, 1, {"+Inf": 40}
    )
    assert counters_delta(TraefikCounters(540, 6, {"+Inf": 540}), before) == TraefikCounters(
        40, 1, {"+Inf": 40}
    )


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
    state = json.loads((tmp_path / ".canaryd" / ".shop.yml.canaryd-traffic.json").read_text())
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


def test_cohort_stats_merge_is_what_the_engine_expects() -> None:
    """to_cohort_stats returns plain CohortStats that merge with access-log readings."""
    merged = CohortStats(1, 0, {bucket_of(50.0): 1}).merge(
        to_cohort_stats(TraefikCounters(2, 1, {"0.1": 2, "+Inf": 2}))
    )
    assert (merged.requests, merged.errors, sum(merged.latency_buckets.values())) == (3, 1, 3)
