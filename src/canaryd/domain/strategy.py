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
`rolling` upgrades the servers a batch at a time: each batch is drained, deployed, health-gated and put
back at the weight of the others, then judged for `stage_duration` against the servers not yet upgraded;
its stages are the batches (`rolling_stages`: the upgraded servers' cumulative share), and the batch being
deployed is kept out of the pool by domain/batches.py. `mirror` first copies `mirror.percent` % of live
requests to the canary servers for one stage while clients get only stable's answers (the canary's are
thrown away by the proxy), then goes on with the canary stages (`then: canary`), ends without promoting
(`then: stop`: rolled back, nothing promoted), or (`then: blue_green`, Flagger's "blue/green with traffic
mirroring") copies them to green instances started beside blue on every server, then runs blue_green's test
and switch (`MirrorBlueGreen`).
`blue_green` starts the new version (green) beside the old one (blue) on every server, on the application's
`green_port`; green is tested on the requests matching its test rules only, then all traffic switches at once,
blue keeps running `keep_old` seconds, then stops (domain/bluegreen.py holds its steps; its green instances
are routed under `green_id(server_id)`, so that every proxy names them apart from blue).
See docs/strategies.md for when to use which.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

from canaryd.domain.config import BlueGreenSettings, CanaryConfig, RollingSettings
from canaryd.domain.pool import PoolServer, desired_backends
from canaryd.domain.types import Backend, State, mirror_percent

StrategyName = Literal["canary", "ab", "blue_green", "mirror", "rolling"]
AVAILABLE: tuple[str, ...] = ("canary", "ab", "rolling", "mirror", "blue_green")
#: The states in which a test routes by its rules (the canary's split states).
TESTING = frozenset({State.MONITORING, State.WAITING_FOR_APPROVAL, State.PAUSED})
#: The one stage of an A/B test: every matching request (100 % of them) goes to the canary.
AB_STAGES = (100.0,)
#: The stage plan of a mirror test that stops after it (`then: stop`): its one stage, the mirror phase.
MIRROR_ONLY_STAGES = (100.0,)
#: The stage plan of `mirror.then: blue_green`: the mirror phase (the value only marks it), then the test.
MIRROR_GREEN_STAGES = (50.0, 100.0)
#: Proxy kinds that can copy requests to the canary and report the canary's answers to the copies.
MIRROR_PROXIES = ("nginx", "traefik")

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


#: The settings blocks that belong to one strategy each (`config.ab` to strategy ab, ...).
STRATEGY_BLOCKS = ("ab", "rolling", "mirror", "blue_green")


def only_own_block(config: CanaryConfig, *own: str) -> CanaryConfig:
    """`config` without the other strategies' blocks. A deployment's own such block is refused
    (`problems`), so one found here came from the application's defaults: it describes the application's
    tests of that other strategy, not this deployment."""
    others = {name: None for name in STRATEGY_BLOCKS if name not in own and getattr(config, name) is not None}
    return config.model_copy(update=others) if others else config


class Canary:
    """A growing random share of requests at each stage (domain/pool.py)."""

    name = "canary"

    def effective(self, config: CanaryConfig) -> CanaryConfig:
        return only_own_block(config)

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
        return only_own_block(config, "ab").model_copy(update={"stages": list(AB_STAGES)})

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


class Rolling:
    """A batch of servers at a time gets the new version and the weight of every other server; its stage is
    judged against the servers not yet upgraded (domain/batches.py, domain/rolling.py)."""

    name = "rolling"

    def effective(self, config: CanaryConfig) -> CanaryConfig:
        # The stages (one per batch) need the number of servers: `rolling_stages` sets them at creation.
        return only_own_block(config, "rolling").model_copy(
            update={"rolling": config.rolling or RollingSettings()}
        )

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
        if state not in (*TESTING, State.DEPLOYING):  # promoting, rolling back, finished: as a canary
            return desired_backends(state, pool, canary_ids, new_version, percentage, busy, max_weight)
        # Every server weighs the same: the upgraded ones' share of requests is their share of the servers.
        # A server of the batch not running the new version yet is absent (drained while it is deployed);
        # routing.routes also keeps the rest of the batch out until all of it is healthy.
        backends = [
            Backend(s.server_id, s.host, s.port, 1, "canary" if s.server_id in canary_ids else "stable")
            for s in sorted(pool, key=lambda s: s.server_id)
            if s.server_id != busy and (s.server_id not in canary_ids or s.version == new_version)
        ]
        return tuple(backends) or desired_backends(
            state, pool, canary_ids, new_version, percentage, busy, max_weight
        )

    def expected_share(self, routed: tuple[Backend, ...]) -> float | None:
        return Canary().expected_share(routed)

    def stage_note(self, config: CanaryConfig, index: int) -> str:
        return (
            f"batch {index + 1} of {len(config.stages)}: {config.stages[index]:g} % of the servers upgraded"
        )


def batch_sizes(settings: RollingSettings, servers: int) -> tuple[int, ...]:
    """How many servers each batch upgrades, in order (the last one may be smaller)."""
    size = min(settings.batch(servers), servers)
    full, rest = divmod(servers, size)
    return (size,) * full + ((rest,) if rest else ())


def rolling_stages(config: CanaryConfig, servers: int) -> CanaryConfig:
    """The settings of a rolling update of `servers` servers: one stage per batch, at the share of the
    servers upgraded once that batch is back (the last one 100 %)."""
    settings = config.rolling or RollingSettings()
    done, stages = 0, []
    for size in batch_sizes(settings, servers):
        done += size
        stages.append(round(100.0 * done / servers, 3))
    return config.model_copy(update={"stages": stages, "rolling": settings})


def rolling_feasibility(settings: RollingSettings, servers: int) -> list[str]:
    """Why a rolling update of this application cannot keep a server serving (empty when it can)."""
    if servers < 2:
        return [
            f"a rolling update needs at least 2 servers (the application has {servers}): "
            "its one batch would drain every server"
        ]
    size = settings.batch(servers)
    if size >= servers:
        return [
            f"rolling.batch_size {size} would drain every server of the application (it has {servers}) at "
            f"once: at most {servers - 1}"
        ]
    return []


class Mirror:
    """Stage 1 copies `mirror.percent` % of live requests to the canary servers, whose answers clients never
    get; the stages after it (`then: canary`) are a canary's, under their own percentages.

    The mirror phase is stage index 0 of the effective plan: `stages` is `[first / 2, *stages]` (the stage
    plan must stay increasing, and the first value only marks the phase: no split is made of it) with `then:
    canary`, `[100]` with `then: stop`. `backends` knows the phase by that first value, which no later stage
    can have. `then: blue_green` is `MirrorBlueGreen`'s."""

    name = "mirror"

    def effective(self, config: CanaryConfig) -> CanaryConfig:
        if config.mirror is None:  # refused by `problems`; never reached with valid settings
            return config
        if config.mirror.then == "blue_green":
            return MIRROR_GREEN.effective(config)
        if config.mirror.then == "stop":
            stages = list(MIRROR_ONLY_STAGES)
        else:
            stages = [config.stages[0] / 2, *config.stages]
        return only_own_block(config, "mirror").model_copy(update={"stages": stages})

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
        if config.mirror is not None and config.mirror.then == "blue_green":
            args = (config, state, pool, canary_ids, new_version, percentage, busy, max_weight)
            return MIRROR_GREEN.backends(*args)
        if state not in TESTING or config.mirror is None or percentage != config.stages[0]:
            return desired_backends(state, pool, canary_ids, new_version, percentage, busy, max_weight)
        stable = [
            Backend(s.server_id, s.host, s.port, 1, "stable") for s in pool if s.server_id not in canary_ids
        ]
        # Only a canary that runs the new version gets copies (paused while deploying: none).
        copies = [
            Backend(s.server_id, s.host, s.port, 1, "canary", (), config.mirror.percent)
            for s in pool
            if s.server_id in canary_ids and s.version == new_version
        ]
        if not stable:  # cannot happen (at most half the servers are canaries); never serve nothing
            return desired_backends(state, pool, canary_ids, new_version, percentage, busy, max_weight)
        return tuple(sorted([*stable, *copies], key=lambda b: b.server_id))

    def expected_share(self, routed: tuple[Backend, ...]) -> float | None:
        percent = mirror_percent(routed)
        if not percent:  # later stages: a canary's split, or (then: blue_green) the test rules
            return BlueGreen().expected_share(routed)
        # Every request is stable's, and a copy of `percent` % of them is the canary's.
        return percent / (100.0 + percent)

    def stage_note(self, config: CanaryConfig, index: int) -> str:
        if config.mirror is not None and config.mirror.then == "blue_green":
            return MIRROR_GREEN.stage_note(config, index)
        if config.mirror is not None and index == 0:
            return f"mirror: {config.mirror.percent} % of requests copied to the canary; clients get stable"
        return f"stage {index} of {len(config.stages) - 1}: {config.stages[index]:g} %"


#: How the reason of a `then: stop` mirror test that passed begins (canaryctl exits 0 on it).
MIRROR_PASSED = "the mirror test passed and mirror.then is stop"


def runs_green(strategy: str, config: CanaryConfig) -> bool:
    """True when the new version starts beside the old on `green_port` of every server (blue_green, and a
    mirror test with `then: blue_green`): domain/bluegreen.py holds the steps of both."""
    if strategy == "blue_green":
        return True
    return strategy == "mirror" and config.mirror is not None and config.mirror.then == "blue_green"


def stops_after_test(strategy: str, config: CanaryConfig) -> bool:
    """True when passing the last stage ends the deployment without promoting (a mirror test with `then:
    stop`): the canary servers are rolled back, having only ever answered copies."""
    return strategy == "mirror" and config.mirror is not None and config.mirror.then == "stop"


def green_id(server_id: int) -> int:
    """The id a server's green instance is routed and recorded under (blue_green)."""
    return GREEN_OFFSET + server_id


class BlueGreen:
    """Green (new) beside blue (old) on every server: tested on matching requests, then all traffic at once."""

    name = "blue_green"

    def effective(self, config: CanaryConfig) -> CanaryConfig:
        # One test stage (like an A/B test); the settings block is always there, with its defaults.
        settings = config.blue_green or BlueGreenSettings()
        return only_own_block(config, "blue_green").model_copy(
            update={"stages": list(AB_STAGES), "blue_green": settings}
        )

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


class MirrorBlueGreen(BlueGreen):
    """`mirror.then: blue_green`: green beside blue on every server as blue_green's; its stage 1 (the mirror
    phase) gives blue every request and green copies of `mirror.percent` % of them, whose answers the proxy
    throws away; stage 2 is blue_green's test, then its switch (domain/bluegreen.py for all the steps)."""

    name = "mirror"

    def effective(self, config: CanaryConfig) -> CanaryConfig:
        settings = config.blue_green or BlueGreenSettings()
        return only_own_block(config, "mirror", "blue_green").model_copy(
            update={"stages": list(MIRROR_GREEN_STAGES), "blue_green": settings}
        )

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
        args = (config, state, pool, canary_ids, new_version, percentage, busy, max_weight)
        tested = super().backends(*args)
        if state not in TESTING or config.mirror is None or percentage != config.stages[0]:
            return tested
        # The mirror phase: BlueGreen's test table, with green copied to instead of bound to the rules.
        copies = [b for b in tested if b.match]
        if not copies:  # green not running yet (or blue gone): whatever BlueGreen serves
            return tested
        mirrors = (
            Backend(b.server_id, b.host, b.port, 1, "canary", (), config.mirror.percent) for b in copies
        )
        return (*(b for b in tested if not b.match), *mirrors)

    def stage_note(self, config: CanaryConfig, index: int) -> str:
        if config.mirror is not None and index == 0:
            percent = config.mirror.percent
            return f"mirror: {percent} % of requests copied to the new version (green); clients get blue"
        return super().stage_note(config, index)


#: The strategy object of `mirror.then: blue_green` (Mirror hands that case to it).
MIRROR_GREEN = MirrorBlueGreen()


def _equal_blue(blue: Sequence[PoolServer], new_version: str) -> list[Backend]:
    return [
        Backend(s.server_id, s.host, s.port, 1, "canary" if s.version == new_version else "stable")
        for s in blue
    ]


_STRATEGIES: dict[str, Strategy] = {
    "canary": Canary(),
    "ab": AB(),
    "rolling": Rolling(),
    "mirror": Mirror(),
    "blue_green": BlueGreen(),
}


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
    if strategy not in AVAILABLE:
        return found  # the schema reports it
    allowed = {strategy, "blue_green"} if _mirror_then(own, config) == "blue_green" else {strategy}
    found += [
        (("body", "config", block), _foreign_block(block, strategy))
        for block in STRATEGY_BLOCKS
        if block not in allowed and block in own
    ]
    if strategy == "ab":
        found += _ab_problems(own, config)
    if strategy == "mirror":
        found += _mirror_problems(own, config)
    if strategy == "rolling":
        found += _rolling_problems(own, config)
    if strategy == "blue_green":
        found += _blue_green_problems(own, config)
    return found


#: What a rolling update refuses, and why (a deployment's own settings; the application's defaults for
#: other strategies are ignored by Rolling.effective where they make no sense).
_NOT_ROLLING = {
    "stages": "stages are the canary's percentages; a rolling update's stages are its batches: set "
    "rolling.batch_size or rolling.batch_percent and leave stages out",
    "canary_server_percentage": "canary_server_percentage sizes the canary; a rolling update's first batch "
    "is rolling.batch_size (or batch_percent) servers: leave canary_server_percentage out",
}


def _rolling_problems(own: Mapping[str, Any], config: CanaryConfig | None) -> list[Problem]:
    """The problems of a rolling update's settings: nothing may name canary stages or shares (`own` and
    `config` as for `problems`; `rolling` itself is checked by its model)."""
    found: list[Problem] = [
        (("body", "config", name), why) for name, why in _NOT_ROLLING.items() if name in own
    ]
    return found + _stage_naming_problems(
        own,
        config,
        approve_before="approve_before names canary percentages; to hold a rolling update before a "
        "batch, pause it or use a pre_stage check",
        check_stages="check stages name canary percentages; a rolling update's checks apply to every "
        "batch: leave stages out",
    )


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
    return found + _stage_naming_problems(
        own,
        config,
        approve_before="approve_before names later stages; an A/B test has one stage (use a pre_promote "
        "check to hold promotion)",
        check_stages="check stages name canary percentages; an A/B test has one stage: leave stages out",
    )


def _foreign_block(block: str, strategy: str) -> str:
    if block == "blue_green":
        return f"blue_green settings apply to strategy blue_green or mirror with then: blue_green, not {strategy}"
    return f"{block} settings apply to strategy {block} only, not {strategy}"


def _mirror_then(own: Mapping[str, Any], config: CanaryConfig | None) -> object:
    """A mirror block's `then` (None: no readable block). As sent, the block may be anything (the schema
    reports that): only a readable `then` counts."""
    mirror = config.mirror if config is not None else own.get("mirror")
    if isinstance(mirror, Mapping):
        return mirror.get("then", "canary")
    return getattr(mirror, "then", None)


def _mirror_problems(own: Mapping[str, Any], config: CanaryConfig | None) -> list[Problem]:
    """The problems of a mirror test's settings (`own` and `config` as for `problems`): the mirror block is
    required; with `then: stop` there are no canary stages, so nothing may name them; with `then:
    blue_green`, blue_green's rules."""
    mirror = config.mirror if config is not None else own.get("mirror")
    if mirror is None:
        return [
            (
                ("body", "config", "mirror"),
                'strategy mirror needs config.mirror: {"percent": 1-100, "then": "canary", "stop" or '
                '"blue_green"}',
            )
        ]
    then = _mirror_then(own, config)
    if then == "blue_green":
        return _blue_green_problems(own, config, "a mirror test with then: blue_green")
    if then != "stop":
        return []
    found: list[Problem] = []
    why = "a mirror test with then: stop has no canary stages (it ends without promoting)"
    if "stages" in own:
        found.append((("body", "config", "stages"), f"{why}: leave stages out"))
    return found + _stage_naming_problems(
        own,
        config,
        approve_before=f"{why}: leave approve_before out",
        check_stages=f"{why}: leave the check's stages out",
    )


def _blue_green_problems(
    own: Mapping[str, Any], config: CanaryConfig | None, who: str = "blue_green"
) -> list[Problem]:
    """The problems of a blue-green deployment's settings (`who`: blue_green, or a mirror test with then:
    blue_green): fixed stages (nothing may name them), every server at once (no canary share), no A/B rules
    (its own test rules are config.blue_green.test_match)."""
    found: list[Problem] = []
    stages = "one test stage" if who == "blue_green" else "a mirror phase and one test stage"
    tests = (
        "tests green for one stage" if who == "blue_green" else "tests green on copies, then on test requests"
    )
    said = {
        "stages": f"stages are the canary's percentages; {who} {tests} of stage_duration, then switches all "
        "traffic at once: leave stages out",
        "canary_server_percentage": f"{who} starts green beside blue on every server: leave "
        "canary_server_percentage out",
    }
    found += [(("body", "config", name), why) for name, why in said.items() if name in own]
    return found + _stage_naming_problems(
        own,
        config,
        approve_before=f"approve_before names later stages; {who} has {stages} (use a pre_promote check to "
        "hold the switch)",
        check_stages=f"check stages name canary percentages; {who} has {stages}: leave stages out",
    )


def _stage_naming_problems(
    own: Mapping[str, Any], config: CanaryConfig | None, approve_before: str, check_stages: str
) -> list[Problem]:
    """`approve_before` and every check's `stages`, for a strategy whose stages nobody may name (each with
    the strategy's own message)."""
    found: list[Problem] = []
    if config.approve_before if config is not None else own.get("approve_before"):
        found.append((("body", "config", "approve_before"), approve_before))
    checks = config.checks if config is not None else own.get("checks")
    for i, check in enumerate(checks if isinstance(checks, list) else []):
        # As sent, a check may be anything (the schema reports that): only a readable `stages` counts.
        stages = check.get("stages") if isinstance(check, Mapping) else getattr(check, "stages", None)
        if stages is not None:
            found.append((("body", "config", "checks", i, "stages"), check_stages))
    return found


__all__ = [
    "AB",
    "AB_STAGES",
    "AVAILABLE",
    "GREEN_OFFSET",
    "MIRROR_GREEN",
    "MIRROR_GREEN_STAGES",
    "MIRROR_ONLY_STAGES",
    "MIRROR_PASSED",
    "MIRROR_PROXIES",
    "STOPPED",
    "STRATEGY_BLOCKS",
    "TESTING",
    "BlueGreen",
    "Canary",
    "Mirror",
    "MirrorBlueGreen",
    "Rolling",
    "Strategy",
    "StrategyName",
    "batch_sizes",
    "green_id",
    "only_own_block",
    "problems",
    "rolling_feasibility",
    "rolling_stages",
    "runs_green",
    "stops_after_test",
    "strategy_for",
]
