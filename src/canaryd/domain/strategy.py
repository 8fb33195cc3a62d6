"""Deployment strategies: the few things that differ between them, behind one small seam.

Every strategy is a plan of the same decision function (`rollout.decide`) and the same engine: the same
lifecycle, judge, gates, approvals, checks, history, status and operator actions. What a strategy decides
is only:

- `backends`: what the proxy must serve in each lifecycle state (the canary's `Backend`s may carry A/B
  match rules, which every proxy adapter renders as routing by rule instead of a weight);
- `expected_share`: the canary's share of requests the judge may expect (None when the requests decide,
  not a split: then "the canary got nothing" is never read as a failure, only as missing evidence);
- `effective`: the stage plan it runs (`config.stages`);
- `stage_note`: how a stage is named in the history;
- `problems`: its settings' rules, checked with every other problem of the request (one 422).

`canary` shifts a growing random share of requests (the stages). `ab` sends exactly the requests that
match one of its rules (a header or a cookie, by equality or regex) to the canary servers for one stage of
`stage_duration`, every other request to stable, then promotes or rolls back as a canary does.
`blue_green` starts the new version (green) beside the old one (blue) on every server, on the application's
`green_port`; green is tested on the requests matching its test rules only, then all traffic switches at once,
blue keeps running `keep_old` seconds, then stops (domain/bluegreen.py holds its steps; its green instances
are routed under `green_id(server_id)`, so that every proxy names them apart from blue).
`mirror` and `rolling` are named so that the API can refuse them clearly until they exist
(docs/strategies.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

from canaryd.domain.config import BlueGreenSettings, CanaryConfig
from canaryd.domain.pool import PoolServer, desired_backends
from canaryd.domain.types import Backend, State

StrategyName = Literal["canary", "ab", "blue_green", "mirror", "rolling"]
AVAILABLE: tuple[str, ...] = ("canary", "ab", "blue_green")
NOT_YET: tuple[str, ...] = ("mirror", "rolling")
#: The states in which a test routes by its rules (the canary's split states).
TESTING = frozenset({State.MONITORING, State.WAITING_FOR_APPROVAL, State.PAUSED})
#: The one stage of an A/B test: every matching request (100 % of them) goes to the canary.
AB_STAGES = (100.0,)

#: blue_green: a green instance is routed (and its version recorded) under its server's id plus this, so that
#: the proxies, which name backends by id, tell the two instances of one server apart. Server ids stay below.
GREEN_OFFSET = 1_000_000_000
#: blue_green: the version recorded for an instance that was stopped.
STOPPED = "stopped"

Loc = tuple[str | int, ...]
Problem = tuple[Loc, str]


class Strategy(Protocol):
    name: str

    def effective(self, config: CanaryConfig) -> CanaryConfig:
        """The settings the rollout runs with (its stage plan)."""
        ...

    def backends(
        self,
        config: CanaryConfig,
        state: State,
        pool: Sequence[PoolServer],
        canary_ids: frozenset[int],
        new_version: str,
        percentage: float,
        busy: int | None,
        max_weight: int,
    ) -> tuple[Backend, ...]:
        """What the proxy must serve in `state` (never empty)."""
        ...

    def expected_share(self, routed: tuple[Backend, ...]) -> float | None:
        """The canary's share of requests (0-1) the judge may expect from what is routed; None: unknown."""
        ...

    def stage_note(self, config: CanaryConfig, index: int) -> str:
        """'stage 2 of 4: 25 %' for the history."""
        ...


class Canary:
    """A growing random share of requests at each stage (domain/pool.py)."""

    name = "canary"

    def effective(self, config: CanaryConfig) -> CanaryConfig:
        # An `ab` block can only come from the application's defaults here (a deployment's own is refused):
        # it describes the application's A/B tests, not this canary.
        return config.model_copy(update={"ab": None}) if config.ab is not None else config

    def backends(
        self,
        config: CanaryConfig,
        state: State,
        pool: Sequence[PoolServer],
        canary_ids: frozenset[int],
        new_version: str,
        percentage: float,
        busy: int | None,
        max_weight: int,
    ) -> tuple[Backend, ...]:
        return desired_backends(state, pool, canary_ids, new_version, percentage, busy, max_weight)

    def expected_share(self, routed: tuple[Backend, ...]) -> float | None:
        total = sum(b.weight for b in routed if not b.match)
        canary = sum(b.weight for b in routed if not b.match and b.cohort == "canary")
        return canary / total if total else 0.0

    def stage_note(self, config: CanaryConfig, index: int) -> str:
        return f"stage {index + 1} of {len(config.stages)}: {config.stages[index]:g} %"


class AB:
    """Requests that match a rule go to the canary servers, all others to stable; one stage."""

    name = "ab"

    def effective(self, config: CanaryConfig) -> CanaryConfig:
        return config.model_copy(update={"stages": list(AB_STAGES)})

    def backends(
        self,
        config: CanaryConfig,
        state: State,
        pool: Sequence[PoolServer],
        canary_ids: frozenset[int],
        new_version: str,
        percentage: float,
        busy: int | None,
        max_weight: int,
    ) -> tuple[Backend, ...]:
        if state not in TESTING or config.ab is None:  # deploying, promoting, rolling back: as a canary
            return desired_backends(state, pool, canary_ids, new_version, percentage, busy, max_weight)
        rules = config.ab.rules()
        stable = [
            Backend(s.server_id, s.host, s.port, 1, "stable") for s in pool if s.server_id not in canary_ids
        ]
        # Only a canary that runs the new version takes matching requests (paused while deploying: none).
        ready = [
            Backend(s.server_id, s.host, s.port, 1, "canary", rules)
            for s in pool
            if s.server_id in canary_ids and s.version == new_version
        ]
        if not stable:  # cannot happen (at most half the servers are canaries); never serve nothing
            return desired_backends(state, pool, canary_ids, new_version, percentage, busy, max_weight)
        return tuple(sorted([*stable, *ready], key=lambda b: b.server_id))

    def expected_share(self, routed: tuple[Backend, ...]) -> float | None:
        if any(b.match for b in routed):
            return None  # the rules decide, not a split: no share to expect
        return Canary().expected_share(routed)

    def stage_note(self, config: CanaryConfig, index: int) -> str:
        rules = config.ab.rules() if config.ab is not None else ()
        said = " or ".join(f"{r.source} {r.name} {'=' if r.op == 'equals' else '~'} {r.value}" for r in rules)
        return f"A/B test: requests with {said} go to the canary, all others to stable"


def green_id(server_id: int) -> int:
    """The id a server's green instance is routed and recorded under (blue_green)."""
    return GREEN_OFFSET + server_id


class BlueGreen:
    """Green (new) beside blue (old) on every server: tested on matching requests, then all traffic at once."""

    name = "blue_green"

    def effective(self, config: CanaryConfig) -> CanaryConfig:
        # One test stage (like an A/B test); the settings block is always there, with its defaults.
        settings = config.blue_green or BlueGreenSettings()
        return config.model_copy(update={"stages": list(AB_STAGES), "ab": None, "blue_green": settings})

    def backends(
        self,
        config: CanaryConfig,
        state: State,
        pool: Sequence[PoolServer],
        canary_ids: frozenset[int],
        new_version: str,
        percentage: float,
        busy: int | None,
        max_weight: int,
    ) -> tuple[Backend, ...]:
        blue = [s for s in pool if s.server_id < GREEN_OFFSET]
        old = [
            Backend(s.server_id, s.host, s.port, 1, "stable")
            for s in blue
            if s.version not in (new_version, STOPPED)
        ]
        green = [
            Backend(s.server_id, s.host, s.port, 1, "canary")
            for s in pool
            if s.server_id >= GREEN_OFFSET and s.version == new_version
        ]
        if state is State.COMPLETED:
            return desired_backends(state, blue, canary_ids, new_version, percentage, busy, max_weight)
        if state in TESTING and old and green:
            rules = (config.blue_green or BlueGreenSettings()).rules()
            return (*old, *(Backend(b.server_id, b.host, b.port, 1, "canary", rules) for b in green))
        if state is State.PROMOTING:  # the switch: every request to green at once
            return tuple(green or old) or tuple(_equal_blue(blue, new_version))
        # pending, deploying, testing without green, rolling back, failed, rolled back: blue; but while a
        # rollback restarts blue instances already stopped, green where it runs on more servers (capacity is
        # never lost; blue takes over in one change once restored). Never serve nothing.
        return tuple(old if len(old) >= len(green) else green) or tuple(_equal_blue(blue, new_version))

    def expected_share(self, routed: tuple[Backend, ...]) -> float | None:
        if any(b.match for b in routed):
            return None  # the test rules decide which requests green gets
        return Canary().expected_share(routed)

    def stage_note(self, config: CanaryConfig, index: int) -> str:
        rules = (config.blue_green or BlueGreenSettings()).rules()
        said = " or ".join(f"{r.source} {r.name} {'=' if r.op == 'equals' else '~'} {r.value}" for r in rules)
        return f"blue-green test: requests with {said} go to the new version (green), all others to blue"


def _equal_blue(blue: Sequence[PoolServer], new_version: str) -> list[Backend]:
    return [
        Backend(s.server_id, s.host, s.port, 1, "canary" if s.version == new_version else "stable")
        for s in blue
    ]


_STRATEGIES: dict[str, Strategy] = {"canary": Canary(), "ab": AB(), "blue_green": BlueGreen()}


def strategy_for(name: str) -> Strategy:
    """The strategy called `name` (one of AVAILABLE); ValueError for any other."""
    try:
        return _STRATEGIES[name]
    except KeyError:
        raise ValueError(f"strategy {name!r} is not available") from None


def problems(strategy: str, own: Mapping[str, Any], config: CanaryConfig | None) -> list[Problem]:
    """Every problem of the strategy and its settings: `own` is the deployment's own config as sent (any
    subset), `config` the effective settings when they are valid (None otherwise; then only `own` is
    read). Locations are those of the API's 422."""
    found: list[Problem] = []
    if strategy in NOT_YET:
        found.append(
            (
                ("body", "strategy"),
                f"strategy {strategy!r} is not available yet (see docs/strategies.md); "
                f"choose one of: {', '.join(AVAILABLE)}",
            )
        )
        return found
    if strategy not in AVAILABLE:
        return found  # the schema reports it
    if strategy != "blue_green" and "blue_green" in own:
        found.append(
            (
                ("body", "config", "blue_green"),
                f"blue_green settings apply to strategy blue_green only, not {strategy}",
            )
        )
    if strategy == "blue_green":
        return found + _blue_green_problems(own, config)
    if strategy != "ab":
        if "ab" in own:
            found.append((("body", "config", "ab"), f"ab settings apply to strategy ab only, not {strategy}"))
        return found
    return _ab_problems(own, config)


def _ab_problems(own: Mapping[str, Any], config: CanaryConfig | None) -> list[Problem]:
    """The problems of an A/B test's settings: its rules are required, and it has one stage, so nothing may
    name stages (`own` and `config` as for `problems`)."""
    found: list[Problem] = []
    ab = config.ab if config is not None else own.get("ab")
    if ab is None:
        found.append(
            (
                ("body", "config", "ab"),
                'strategy ab needs config.ab: {"match": [{"header" or "cookie": name, "equals" or "regex": value}]}',
            )
        )
    if "stages" in own:
        found.append(
            (
                ("body", "config", "stages"),
                "stages are the canary's percentages; an A/B test routes by its match rules and runs one "
                "stage of stage_duration: leave stages out",
            )
        )
    approve = config.approve_before if config is not None else own.get("approve_before")
    if approve:
        found.append(
            (
                ("body", "config", "approve_before"),
                "approve_before names later stages; an A/B test has one stage (use a pre_promote check to "
                "hold promotion)",
            )
        )
    checks = config.checks if config is not None else own.get("checks")
    for i, check in enumerate(checks if isinstance(checks, list) else []):
        stages = check.stages if not isinstance(check, Mapping) else check.get("stages")
        if stages is not None:
            found.append(
                (
                    ("body", "config", "checks", i, "stages"),
                    "check stages name canary percentages; an A/B test has one stage: leave stages out",
                )
            )
    return found


def _blue_green_problems(own: Mapping[str, Any], config: CanaryConfig | None) -> list[Problem]:
    """The problems of a blue-green deployment's settings: one test stage (nothing may name stages), every
    server at once (no canary share), no A/B rules (its own test rules are config.blue_green.test_match)."""
    found: list[Problem] = []
    said = {
        "stages": "stages are the canary's percentages; blue_green tests green for one stage of "
        "stage_duration, then switches all traffic at once: leave stages out",
        "canary_server_percentage": "blue_green starts green beside blue on every server: leave "
        "canary_server_percentage out",
        "ab": "ab settings apply to strategy ab only; blue_green's test rules are config.blue_green.test_match",
    }
    found += [(("body", "config", name), why) for name, why in said.items() if name in own]
    approve = config.approve_before if config is not None else own.get("approve_before")
    if approve:
        found.append(
            (
                ("body", "config", "approve_before"),
                "approve_before names later stages; blue_green has one test stage (use a pre_promote check "
                "to hold the switch)",
            )
        )
    checks = config.checks if config is not None else own.get("checks")
    for i, check in enumerate(checks if isinstance(checks, list) else []):
        stages = check.stages if not isinstance(check, Mapping) else check.get("stages")
        if stages is not None:
            found.append(
                (
                    ("body", "config", "checks", i, "stages"),
                    "check stages name canary percentages; blue_green has one test stage: leave stages out",
                )
            )
    return found


__all__ = [
    "AB",
    "AB_STAGES",
    "AVAILABLE",
    "GREEN_OFFSET",
    "NOT_YET",
    "STOPPED",
    "TESTING",
    "BlueGreen",
    "Canary",
    "Strategy",
    "StrategyName",
    "green_id",
    "problems",
    "strategy_for",
]
