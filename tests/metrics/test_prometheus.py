"""The Prometheus metric source against a real Prometheus scraping real sample-app instances."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import httpx
import pytest
from pydantic import ValidationError
from tests.fixtures.apps import AppFleet
from tests.fixtures.nginx import free_port
from tests.fixtures.prometheus import PrometheusInstance

from canaryd.domain.config import CanaryConfig, PrometheusQueries, PrometheusSource
from canaryd.domain.judge import Observation, Outcome, judge_sequential
from canaryd.domain.types import CohortStats
from canaryd.metrics.prometheus import (
    CohortQuery,
    MetricSourceError,
    PrometheusReader,
    histogram_to_stats,
    render_query,
)


async def hit(client: httpx.AsyncClient, url: str, count: int) -> list[int]:
    """`count` GETs, 20 at a time; returns the status codes."""
    codes: list[int] = []
    for start in range(0, count, 20):
        batch = await asyncio.gather(*(client.get(url) for _ in range(min(20, count - start))))
        codes += [r.status_code for r in batch]
    return codes


async def scraped(url: str, promql: str, at_least: float, timeout: float = 20.0) -> None:
    """Waits until Prometheus answers `promql` with a value of at least `at_least`."""
    deadline = asyncio.get_running_loop().time() + timeout
    async with httpx.AsyncClient() as client:
        while True:
            body = (await client.get(f"{url}/api/v1/query", params={"query": promql})).json()
            result = body["data"]["result"]
            if result and float(result[0]["value"][1]) >= at_least:
                return
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"Prometheus never saw {promql} ≥ {at_least}: {body}")
            await asyncio.sleep(0.25)


async def test_reads_cohorts_from_real_prometheus(
    app_fleet: AppFleet, prometheus: Callable[[list[str]], PrometheusInstance]
) -> None:
    """Counts, errors and latency per cohort match what the apps served, and the judge fails the bad canary."""
    net = random.randint(10, 250)
    canary = app_fleet.start(f"127.0.{net}.11", "v2-bad-slow")
    stable = [app_fleet.start(f"127.0.{net}.{12 + i}", "v1") for i in range(2)]
    prom = prometheus([canary.address, *(a.address for a in stable)])
    await scraped(prom.url, "count(up == 1)", 3)  # every /metrics page parses

    async with httpx.AsyncClient(timeout=10) as client:
        canary_codes = await hit(client, f"http://{canary.address}/", 80)
        stable_codes = [c for a in stable for c in await hit(client, f"http://{a.address}/", 100)]
    await scraped(prom.url, "sum(http_requests_total)", 280)
    # increase() extrapolates each series by up to half its average scrape interval at either end, in
    # proportion to the series' average rate: over a series of only two or three samples (a loaded machine
    # delays scrapes) that overshot 80 requests by 37 %. Eight samples make the overshoot at most ~1/8.
    await scraped(prom.url, "min(count_over_time(http_requests_total[120s]))", 8)

    source = PrometheusSource(url=prom.url)
    async with httpx.AsyncClient() as http:
        read = await PrometheusReader(http, source).read(
            [
                CohortQuery("canary", (canary.address,), "v2-bad-slow"),
                CohortQuery("stable", tuple(a.address for a in stable), "v1"),
            ],
            window_s=120,
        )
    c, s = read["canary"], read["stable"]
    # increase() extrapolates up to about a scrape interval at each end of a series: counts are close, not exact.
    assert c.requests == pytest.approx(80, rel=0.2) and s.requests == pytest.approx(200, rel=0.2)
    assert c.errors == pytest.approx(canary_codes.count(500), rel=0.25, abs=3)
    assert s.errors == stable_codes.count(500) == 0
    c_p50, s_p95 = c.quantile_ms(0.5), s.quantile_ms(0.95)
    assert c_p50 is not None and s_p95 is not None
    assert c_p50 >= 300 and s_p95 <= 60, (c.latency_buckets, s.latency_buckets)

    # One check is one time bucket; uncapped, so that this single bucket can decide (docs/judge.md).
    one_bucket = CanaryConfig(bucket_max_evidence=1e6)
    verdict = judge_sequential(Observation(c, s, s, canary_share=80 / 280), one_bucket).verdict
    assert verdict.outcome is Outcome.FAIL
    assert {m.metric for m in verdict.metrics if m.outcome is Outcome.FAIL} == {"error_rate", "latency_tail"}


async def test_failures_raise_metric_source_error(
    app_fleet: AppFleet, prometheus: Callable[[list[str]], PrometheusInstance]
) -> None:
    """Unreachable Prometheus, and a query Prometheus rejects, both raise MetricSourceError with the cause."""
    app = app_fleet.start("127.0.0.1", "v1")
    prom = prometheus([app.address])
    cohort = [CohortQuery("canary", (app.address,), "v1")]
    async with httpx.AsyncClient() as http:
        down = PrometheusSource(url=f"http://127.0.0.1:{free_port()}", timeout=2)
        with pytest.raises(MetricSourceError, match="cannot be reached"):
            await PrometheusReader(http, down).read(cohort, 60)
        broken = PrometheusSource(url=prom.url, queries=PrometheusQueries(requests="sum(rate(x[$window])"))
        with pytest.raises(MetricSourceError, match="Prometheus answered an error"):
            await PrometheusReader(http, broken).read(cohort, 60)


def test_render_query_escapes_addresses() -> None:
    """Addresses become an exact regex inside a PromQL string; the window is whole seconds."""
    q = CohortQuery("stable", ("127.0.0.1:8080", "[::1]:9000"), "v1.2+b")
    rendered = render_query('sum(x{instance=~"$instances",v="$version",c="$cohort"}[$window])', q, 95)
    assert (
        rendered
        == 'sum(x{instance=~"127\\\\.0\\\\.0\\\\.1:8080|\\\\[::1\\\\]:9000",v="v1.2+b",c="stable"}[95s])'
    )


@pytest.mark.parametrize(
    ("address", "version"), [('a:1"} or vector(1) #', "v1"), ("127.0.0.1:80", 'v1"}'), ("host", "v1")]
)
def test_render_query_refuses_unsafe_values(address: str, version: str) -> None:
    """A value that could change the query's meaning is refused."""
    with pytest.raises(ValueError):
        render_query('x{i=~"$instances"}', CohortQuery("canary", (address,), version), 60)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("sum(x[$windows])", "unknown placeholder"),
        ("sum(x)\nor vector(1)", "one line"),
        ("x" * 1001, "at most 1000"),
        ("", "non-empty"),
    ],
)
def test_templates_are_validated(template: str, message: str) -> None:
    """Templates are bounded, single-line, with known placeholders only."""
    with pytest.raises(ValidationError, match=message):
        CanaryConfig.model_validate(
            {
                "metrics_source": "prometheus",
                "prometheus": {"url": "http://p:9090", "queries": {"errors": template}},
            }
        )


def test_prometheus_source_needs_settings() -> None:
    """metrics_source prometheus without its settings is refused."""
    with pytest.raises(ValidationError, match="needs the prometheus settings"):
        CanaryConfig(metrics_source="prometheus")


def test_histogram_buckets_land_at_their_upper_edge() -> None:
    """Cumulative `le` buckets become per-bucket counts; +Inf lands just above the largest edge."""
    stats = CohortStats()
    samples = [({"le": "0.05"}, 10.0), ({"le": "0.5"}, 15.0), ({"le": "+Inf"}, 16.0)]
    histogram_to_stats(samples, stats)
    assert sum(stats.latency_buckets.values()) == 16
    assert stats.slower_than(60) == 6 and stats.slower_than(510) == 1
