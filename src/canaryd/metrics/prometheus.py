"""Cohort traffic read from Prometheus: one instant query per metric and cohort, over the stage so far.

The PromQL templates come from `CanaryConfig.prometheus.queries` (validated there: one line, bounded,
known `$placeholders` only). Placeholder values are built here from validated data and escaped for a
PromQL double-quoted string: `$instances` is a regex alternation of the cohort's `host:port` addresses,
`$window` a duration in whole seconds, `$cohort` "canary" or "stable", `$version` the cohort's version.
The rendered query travels as an HTTP query parameter; it never reaches a shell or a proxy config.

A Prometheus histogram (`le` buckets, in seconds) is turned into canaryd's log-bucket histogram by putting
each bucket's requests at its upper edge, so quantiles and "slower than" counts are at most one
Prometheus bucket high. Any failure (unreachable, an error answer, a malformed one) raises
MetricSourceError; the engine retries and then applies `source_failure_action`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from canaryd.domain.config import PrometheusSource
from canaryd.domain.types import Cohort, CohortStats, bucket_of

_ADDRESS = re.compile(r"^[A-Za-z0-9.:\[\]-]{1,260}:\d{1,5}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
_PLACEHOLDER = re.compile(r"\$([A-Za-z_]*)")


class MetricSourceError(Exception):
    """The metric source could not be read (or answered nonsense)."""


@dataclass(frozen=True, slots=True)
class CohortQuery:
    """Which instances make up a cohort, and the version they run."""

    cohort: Cohort
    addresses: tuple[str, ...]
    version: str


def _promql_string(text: str) -> str:
    """Escapes text for the inside of a PromQL double-quoted string."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def render_query(template: str, query: CohortQuery, window_s: int) -> str:
    """The template with its placeholders filled in; raises ValueError on a value that is not safe."""
    for address in query.addresses:
        if not _ADDRESS.fullmatch(address):
            raise ValueError(f"instance address {address[:80]!r} is not host:port")
    if not _VERSION.fullmatch(query.version):
        raise ValueError(f"version {query.version[:80]!r} is not allowed")
    if window_s < 1:
        raise ValueError("window must be at least 1 second")
    # A regex of exactly these addresses (Prometheus anchors =~ matchers), then escaped for the string.
    instances = "|".join(re.escape(a) for a in query.addresses) or "^$"
    values = {
        "instances": _promql_string(instances),
        "window": f"{int(window_s)}s",
        "cohort": query.cohort,
        "version": query.version,
    }

    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in values:
            raise ValueError(f"unknown placeholder ${name}")
        return values[name]

    return _PLACEHOLDER.sub(fill, template)


def _samples(body: Any) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of an instant-vector answer; raises MetricSourceError on anything else."""
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error") if isinstance(body, dict) else None
        raise MetricSourceError(f"Prometheus answered an error: {error or body!r:.200}")
    data = body.get("data")
    if not isinstance(data, dict) or data.get("resultType") not in ("vector", "scalar"):
        raise MetricSourceError("Prometheus answered something other than an instant vector")
    result = data.get("result")
    if data["resultType"] == "scalar":
        result = [{"metric": {}, "value": result}]
    out: list[tuple[dict[str, str], float]] = []
    for item in result or []:
        try:
            value = float(item["value"][1])
            labels = {str(k): str(v) for k, v in item.get("metric", {}).items()}
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise MetricSourceError(f"malformed sample in Prometheus answer: {item!r:.200}") from exc
        if math.isnan(value):
            continue  # e.g. a rate over no samples: no data, not a failure
        out.append((labels, value))
    return out


def _count(samples: list[tuple[dict[str, str], float]]) -> int:
    """One count from a summed query: 0 without data (increase() extrapolates, hence the rounding)."""
    return max(0, round(sum(v for _, v in samples)))


def histogram_to_stats(samples: list[tuple[dict[str, str], float]], stats: CohortStats) -> None:
    """Adds cumulative `le` buckets (seconds) to a CohortStats histogram, each at its upper edge."""
    edges: list[tuple[float, float]] = []
    for labels, value in samples:
        label = labels.get("le")
        if label is None:
            raise MetricSourceError("latency bucket sample without an 'le' label")
        try:
            edges.append((float(label), value))
        except ValueError as exc:
            raise MetricSourceError(f"bad 'le' label {label!r:.40}") from exc
    edges.sort()
    previous, largest_ms = 0.0, 0.0
    for le, cumulative in edges:
        n = max(0, round(cumulative - previous))
        previous = max(previous, cumulative)
        if math.isinf(le):
            index = bucket_of(largest_ms) + 1 if largest_ms else 0
        else:
            largest_ms = le * 1000
            index = bucket_of(largest_ms)
        if n:
            stats.latency_buckets[index] = stats.latency_buckets.get(index, 0) + n


class PrometheusReader:
    """Reads each cohort's requests, errors and latency histogram over the stage so far."""

    def __init__(self, http: httpx.AsyncClient, source: PrometheusSource) -> None:
        self._http = http
        self._source = source

    async def _query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        url = self._source.url.rstrip("/") + "/api/v1/query"
        try:
            r = await self._http.get(url, params={"query": promql}, timeout=self._source.timeout)
        except httpx.HTTPError as exc:
            raise MetricSourceError(f"Prometheus at {self._source.url} cannot be reached: {exc}") from exc
        try:
            body = r.json()
        except ValueError as exc:
            raise MetricSourceError(f"Prometheus answered HTTP {r.status_code} without JSON") from exc
        return _samples(body)

    async def read(self, cohorts: Sequence[CohortQuery], window_s: int) -> dict[Cohort, CohortStats]:
        """Stage-so-far traffic per cohort; a cohort without series reads as no traffic."""
        queries = self._source.queries
        out: dict[Cohort, CohortStats] = {}
        for q in cohorts:
            try:
                requests_q = render_query(queries.requests, q, window_s)
                errors_q = render_query(queries.errors, q, window_s)
                latency_q = render_query(queries.latency_buckets, q, window_s)
            except ValueError as exc:
                raise MetricSourceError(f"cannot build the {q.cohort} query: {exc}") from exc
            stats = CohortStats()
            stats.requests = _count(await self._query(requests_q))
            stats.errors = min(stats.requests, _count(await self._query(errors_q)))
            histogram_to_stats(await self._query(latency_q), stats)
            out[q.cohort] = stats
        return out


__all__ = ["CohortQuery", "MetricSourceError", "PrometheusReader", "histogram_to_stats", "render_query"]
