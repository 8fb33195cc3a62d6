"""The sequential judge on real traffic: the gross-failure fast path, the stage-end look's caps, the state."""

from __future__ import annotations

import json

import pytest

from canaryd.domain.config import CanaryConfig
from canaryd.domain.judge import Evidence, Observation, Outcome, Verdict, judge_sequential
from canaryd.domain.types import CohortStats

MINUTE = CanaryConfig(health_check_interval=60, stage_duration=1800)  # one check per bucket, 30 checks
Minutes = list[tuple[int, int]]


def cohort(requests: int, errors: int, latency_ms: float = 100.0) -> CohortStats:
    stats = CohortStats()
    for i in range(requests):
        stats.record(503 if i < errors else 200, latency_ms + (i % 7) * 20)
    return stats


def run(canary: Minutes, stable: Minutes, share: float = 0.5) -> tuple[list[Verdict], Evidence]:
    """Feeds per-minute (requests, errors) of both cohorts, one check a minute, until the first fail."""
    c_total, s_total, evidence = CohortStats(), CohortStats(), Evidence()
    verdicts: list[Verdict] = []
    for (cn, ce), (sn, se) in zip(canary, stable, strict=True):
        c_total, s_total = c_total.merge(cohort(cn, ce)), s_total.merge(cohort(sn, se))
        obs = Observation(c_total, s_total, s_total, canary_share=share, evidence=evidence)
        judgement = judge_sequential(obs, MINUTE)
        evidence = judgement.evidence
        verdicts.append(judgement.verdict)
        if judgement.verdict.outcome is Outcome.FAIL:
            break
    return verdicts, evidence


@pytest.mark.parametrize(
    ("case", "canary", "stable", "share", "gross_at"),
    [
        ("1:1, every request fails", [(20, 20)] * 5, [(20, 0)] * 5, 0.5, 2),
        ("1:9, every request fails", [(10, 10)] * 5, [(90, 1)] * 5, 0.1, 2),
        ("1:1, 60 % errors", [(50, 30)] * 5, [(50, 0)] * 5, 0.5, 2),
        # one bad minute (an outage of one server) is never enough, however bad
        ("one outage minute", [(20, 20), (20, 0), (20, 0), (20, 20), (20, 0)], [(20, 0)] * 5, 0.5, None),
        # both cohorts failing is a shared cause (a dependency), not the canary
        ("both cohorts fail", [(20, 20)] * 5, [(20, 20)] * 5, 0.5, None),
        ("stable at a fifth of the canary's rate", [(20, 20)] * 5, [(20, 5)] * 5, 0.5, None),
        ("30 % errors is not gross", [(20, 6)] * 5, [(20, 0)] * 5, 0.5, None),
        ("2 req/min: too few errors to tell", [(2, 2)] * 5, [(2, 0)] * 5, 0.5, None),
    ],
)  # fmt: skip
def test_gross_failure_fast_path(
    case: str, canary: Minutes, stable: Minutes, share: float, gross_at: int | None
) -> None:
    """A canary failing most of its requests in two consecutive buckets, alone, is rolled back at once."""
    verdicts, _ = run(canary, stable, share)
    gross = [i for i, v in enumerate(verdicts, start=1) if any("gross failure" in r for r in v.reasons)]
    assert (gross[0] if gross else None) == gross_at, (case, [v.reasons for v in verdicts])
    if gross_at is not None:
        reason = verdicts[gross_at - 1].metric("error_rate").reason
        assert reason.startswith("error_rate: gross failure: the canary failed at least 50 % of its requests")
        assert verdicts[gross_at - 1].metric("error_rate").figures["gross_p_value"] is not None


def test_gross_failure_waits_for_the_second_bucket() -> None:
    """At the first check, even a canary failing everything is not rolled back by the comparison alone."""
    verdicts, _ = run([(20, 20)], [(20, 0)])
    assert verdicts[0].outcome is not Outcome.FAIL


@pytest.mark.parametrize(
    ("case", "canary", "stable", "counted"),  # counted: per bucket judged, or in all when it is a burst
    [
        # a steady regression: every bucket's 3 errors count, the early ones too (caps from the stage's rate)
        ("steady 6 %", [(50, 3)] * 10, [(50, 0)] * 10, 3),
        # a lone burst counts like a couple of ordinary errors
        ("one burst of 20", [(50, 0)] * 9 + [(50, 20)], [(50, 1)] * 10, 2),
        # stable's own bursts do not raise the canary's caps (its worst buckets are left out)
        ("stable bursts, canary burst", [(10, 0)] * 19 + [(10, 4)], [(90, 1)] * 17 + [(90, 30)] * 3, 1),
    ],
)
def test_stage_end_caps(case: str, canary: Minutes, stable: Minutes, counted: int) -> None:
    """What the stage-end look counts: a steady regression in full, a burst only up to its cap."""
    verdicts, _ = run(canary, stable)
    expected = counted * len(verdicts) if case.startswith("steady") else counted
    assert verdicts[-1].metric("error_rate").figures["stage_end_counted"] == expected, case


def test_state_keeps_per_bucket_counts_and_is_small() -> None:
    """The judge state carries each closed bucket's four counts (what the stage-end look replays), not a
    distribution, and the latency histograms only from half the threshold up: a few KB at 2,000 req/min."""
    canary, stable = [(200, 2)] * 30, [(1800, 18)] * 30
    verdicts, evidence = run(canary, stable, share=0.1)
    raw = evidence.to_json()
    assert Evidence.from_json(json.loads(json.dumps(raw))) == evidence
    streams = raw["streams"]
    assert isinstance(streams, dict)
    assert streams["error_rate"]["bucket_counts"][:8] == [200, 2, 1800, 18, 200, 2, 1800, 18]
    assert len(streams["error_rate"]["bucket_counts"]) == 4 * 30
    assert len(json.dumps(raw)) < 3000
    assert verdicts[-1].metric("error_rate").figures["stage_end_p_value"] is not None


def test_state_of_the_previous_format_is_read() -> None:
    """Evidence written with the stored null distribution (before per-bucket counts) still loads."""
    old = {
        "stage": 0,
        "streams": {"error_rate": {"log_lr": [0.1] * 5, "end_null": [0.5, 0.5], "end_offset": 1}},
    }
    evidence = Evidence.from_json(old)
    assert evidence.streams["error_rate"].bucket_counts == ()
    assert evidence.streams["error_rate"].log_lr == (0.1,) * 5
