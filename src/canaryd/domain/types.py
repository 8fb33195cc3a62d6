"""Plain data shared by the pure core and the adapters around it. No I/O here."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal


class State(StrEnum):
    """Lifecycle states of a deployment (see domain/lifecycle.py for the rules)."""

    PENDING = "pending"
    DEPLOYING = "deploying"
    MONITORING = "monitoring"
    WAITING_FOR_APPROVAL = "waiting_for_approval"
    PAUSED = "paused"
    PROMOTING = "promoting"
    COMPLETED = "completed"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


#: States after which nothing more happens to a deployment.
FINISHED_STATES = frozenset({State.COMPLETED, State.ROLLED_BACK})

Cohort = Literal["canary", "stable"]


@dataclass(frozen=True, slots=True)
class MatchRule:
    """One A/B rule (strategy `ab`): a request whose header or cookie `name` equals `value` (`op` "equals",
    exact and case-sensitive) or contains a match of the regex `value` (`op` "regex", unanchored unless the
    pattern anchors itself). Validated by domain/matching.py; each proxy adapter quotes it its own way."""

    source: Literal["header", "cookie"]
    name: str
    op: Literal["equals", "regex"]
    value: str

    def to_json(self) -> dict[str, str]:
        return {self.source: self.name, self.op: self.value}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> MatchRule:
        source: Literal["header", "cookie"] = "header" if "header" in data else "cookie"
        op: Literal["equals", "regex"] = "equals" if "equals" in data else "regex"
        return cls(source, data[source], op, data[op])


@dataclass(frozen=True, slots=True)
class Backend:
    """One application instance as the proxy should route to it."""

    server_id: int
    host: str
    port: int
    weight: int  # > 0; a server that must get no traffic is simply absent from the pool
    cohort: Cohort
    #: Non-empty: this server takes only the requests that match one of these rules (an A/B test), never a
    #: share of the random split: its weight there is 0. Every other request goes to the servers without rules.
    match: tuple[MatchRule, ...] = ()
    #: 1-100 (strategy mirror): this server takes no live request; it gets a copy of `mirror` percent of
    #: them, whose answers the proxy throws away (clients get stable's). 0: not a mirror.
    mirror: int = 0

    def to_json(self) -> dict[str, object]:
        """As stored in `Application.proxy_applied` (the rules only when there are some, so that a table
        without them reads exactly as before)."""
        out: dict[str, object] = {
            "server_id": self.server_id,
            "host": self.host,
            "port": self.port,
            "weight": self.weight,
            "cohort": self.cohort,
        }
        if self.match:
            out["match"] = [r.to_json() for r in self.match]
        if self.mirror:
            out["mirror"] = self.mirror
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Backend:
        cohort: Cohort = "canary" if data["cohort"] == "canary" else "stable"
        rules = tuple(MatchRule.from_json(r) for r in data.get("match") or ())
        return cls(
            int(data["server_id"]),
            str(data["host"]),
            int(data["port"]),
            int(data["weight"]),
            cohort,
            rules,
            int(data.get("mirror") or 0),
        )


def split_pool(backends: tuple[Backend, ...] | list[Backend]) -> list[Backend]:
    """The backends that take part in the random (weighted) split: those without A/B rules or a mirror."""
    return [b for b in backends if not b.match and not b.mirror]


def mirror_percent(backends: tuple[Backend, ...] | list[Backend]) -> int:
    """The share of requests copied to the mirrored canaries of a route table (strategy mirror), or 0."""
    return next((b.mirror for b in backends if b.mirror), 0)


def match_rules(backends: tuple[Backend, ...] | list[Backend]) -> tuple[MatchRule, ...]:
    """The A/B rules of a route table (every rule-bound backend carries the same ones), or ()."""
    return next((b.match for b in backends if b.match), ())


# Latency histogram: log-spaced buckets, 5 % wide, from 0.1 ms to ~10 min. Bucket i covers
# [BASE * GROWTH**(i-1), BASE * GROWTH**i) milliseconds; bucket 0 holds everything below BASE.
HISTOGRAM_BASE_MS = 0.1
HISTOGRAM_GROWTH = 1.05


def bucket_of(latency_ms: float) -> int:
    """Index of the histogram bucket holding `latency_ms`."""
    if latency_ms < HISTOGRAM_BASE_MS:
        return 0
    return int(math.log(latency_ms / HISTOGRAM_BASE_MS) / math.log(HISTOGRAM_GROWTH)) + 1


def bucket_upper_ms(index: int) -> float:
    """Upper edge of bucket `index` in milliseconds."""
    return HISTOGRAM_BASE_MS * HISTOGRAM_GROWTH**index


@dataclass(slots=True)
class CohortStats:
    """Requests seen by one cohort in one window: counts plus a sparse latency histogram."""

    requests: int = 0
    errors: int = 0  # 5xx answers, including those nginx generated for a failed upstream
    latency_buckets: dict[int, int] = field(default_factory=dict)

    def record(self, status: int, latency_ms: float) -> None:
        self.requests += 1
        if status >= 500:
            self.errors += 1
        b = bucket_of(latency_ms)
        self.latency_buckets[b] = self.latency_buckets.get(b, 0) + 1

    def merge(self, other: CohortStats) -> CohortStats:
        buckets = dict(self.latency_buckets)
        for b, n in other.latency_buckets.items():
            buckets[b] = buckets.get(b, 0) + n
        return CohortStats(self.requests + other.requests, self.errors + other.errors, buckets)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def quantile_ms(self, q: float) -> float | None:
        """Latency quantile (upper bucket edge, so at most 5 % high); None without data."""
        total = sum(self.latency_buckets.values())
        if total == 0:
            return None
        rank = math.ceil(q * total)
        seen = 0
        for b in sorted(self.latency_buckets):
            seen += self.latency_buckets[b]
            if seen >= rank:
                return round(bucket_upper_ms(b), 3)
        return round(bucket_upper_ms(max(self.latency_buckets)), 3)

    def slower_than(self, threshold_ms: float) -> int:
        """Requests whose latency bucket lies wholly above `threshold_ms`."""
        first = bucket_of(threshold_ms) + 1
        return sum(n for b, n in self.latency_buckets.items() if b >= first)

    def to_json(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "latency_buckets": {str(k): v for k, v in sorted(self.latency_buckets.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, object] | None) -> CohortStats:
        if not data:
            return cls()
        raw = data.get("latency_buckets") or {}
        assert isinstance(raw, dict)
        requests, errors = data.get("requests", 0), data.get("errors", 0)
        assert isinstance(requests, int) and isinstance(errors, int)
        return cls(requests, errors, {int(k): int(v) for k, v in raw.items()})

    def summary(self) -> dict[str, float | int | None]:
        """The figures people read: counts, rate and percentiles."""
        rate = self.error_rate
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": None if rate is None else round(rate, 5),
            "p50_ms": self.quantile_ms(0.50),
            "p95_ms": self.quantile_ms(0.95),
            "p99_ms": self.quantile_ms(0.99),
        }


@dataclass(frozen=True, slots=True)
class HostLoad:
    """CPU and memory use of one server, in percent (None when it could not be read)."""

    cpu_percent: float | None
    memory_percent: float | None
