"""Process counters exposed at /metrics in Prometheus text format (no client library needed)."""

from __future__ import annotations

from collections import Counter


class Counters:
    def __init__(self) -> None:
        self._counts: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
        self._sums: dict[str, float] = {}

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        self._counts[(name, tuple(sorted(labels.items())))] += amount  # type: ignore[assignment]

    def observe(self, name: str, seconds: float) -> None:
        """A summary: count and sum, enough for an average in PromQL."""
        self.inc(f"{name}_count")
        self._sums[name] = self._sums.get(name, 0.0) + seconds

    def render(self) -> list[str]:
        lines = []
        for (name, labels), value in sorted(self._counts.items()):
            label_text = ",".join(f'{k}="{v}"' for k, v in labels)
            lines.append(
                f"canaryd_{name}{{{label_text}}} {value}" if label_text else f"canaryd_{name} {value}"
            )
        for name, total in sorted(self._sums.items()):
            lines.append(f"canaryd_{name}_sum {total}")
        return lines
