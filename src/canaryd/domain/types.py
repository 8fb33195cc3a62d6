"""Plain data shared by the pure core and the adapters around it. No I/O here."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal


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
class Backend:
    """One application instance as the proxy should route to it."""

    server_id: int
    host: str
    port: int
    weight: int  # > 0; a server that must get no traffic is simply absent from the pool
    cohort: Cohort


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
