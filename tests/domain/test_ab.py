"""Strategy `ab` in the pure core: what a rule may say (PCRE and RE2 alike), what the proxy serves in each
state, and the strategy's settings problems."""

from __future__ import annotations

import pytest

from canaryd.domain.config import CanaryConfig
from canaryd.domain.matching import proxy_problems, regex_problems, rule_problems
from canaryd.domain.pool import PoolServer
from canaryd.domain.routing import canary_share
from canaryd.domain.strategy import AB, STRATEGY_BLOCKS, Canary, problems, strategy_for
from canaryd.domain.types import Backend, MatchRule, State

BETA = MatchRule("header", "X-Beta", "equals", "1")
PRO = MatchRule("cookie", "plan", "equals", "pro")
MOBILE = MatchRule("header", "User-Agent", "regex", ".*Mobile.*")
AB_CONFIG = CanaryConfig.model_validate(
    {"ab": {"match": [{"header": "X-Beta", "equals": "1"}, {"cookie": "plan", "equals": "pro"}]}}
)


@pytest.mark.parametrize(
    "pattern",
    [
        ".*Mobile.*",
        "^pro$",
        "(?i)beta",
        "(?i:beta)-\\d{1,3}",
        "a*?b",
        "[]a]b",
        "[^]x]y",
        "Mobile\\.\\w+",
        "x{2,}",
    ],
)
def test_regexes_both_flavours_read_alike(pattern: str) -> None:
    """Plain regexes are accepted."""
    assert regex_problems(pattern) == []


@pytest.mark.parametrize(
    ("pattern", "words"),
    [
        ("(?=x)a", "(?=x..."),
        ("(?<!x)a", "(?<!..."),
        ("(?P<n>a)", "(?P<..."),
        ("(?>a)b", "(?>a..."),
        ("a++", "possessive"),
        ("a{2}+", "possessive"),
        ("(a)\\1", "\\1"),
        ("\\Aab", "\\A"),
        ("ab\\z", "\\z"),
        ("\\x41b", "\\x"),
        ("\\p{L}b", "\\p"),
        ("[[:alpha:]]b", "inside a character class"),
        ("a{,3}b", "'{' that is not a repetition"),
        ("a{2000}", "above 1000"),
        ("a`b", "quotes or backticks"),
        ("a'b", "quotes or backticks"),
        ('a"b', "quotes or backticks"),
        ("a\tb", "printable ASCII"),
        ("é", "printable ASCII"),
        ("(ab", "does not compile"),
        (".*", "matches an empty value"),
        ("a|", "matches an empty value"),
        ("x" * 257, "1 to 256"),
    ],
)
def test_regexes_that_differ_or_break_are_refused(pattern: str, words: str) -> None:
    """Constructs PCRE and RE2 do not share, syntax a proxy's quoting would break, and patterns that would
    send requests without the header to the canary on nginx only, are refused with the reason."""
    found = regex_problems(pattern)
    assert found and words in " ".join(found), found


def test_names_and_values() -> None:
    """Names and exact values that reach proxy files are checked against strict patterns."""
    assert rule_problems(BETA) == [] and rule_problems(PRO) == [] and rule_problems(MOBILE) == []
    assert rule_problems(MatchRule("header", "X_Beta", "equals", "1"))
    assert rule_problems(MatchRule("cookie", "my-plan", "equals", "pro"))
    assert rule_problems(MatchRule("cookie", "plan", "equals", "pro;x"))
    assert rule_problems(MatchRule("header", "X-Beta", "equals", ""))


def test_proxy_problems() -> None:
    """Traefik has no regex on one cookie's value; every proxy needs canaryd's own entry point."""
    cookie_regex = MatchRule("cookie", "plan", "regex", "^pro")
    assert proxy_problems([cookie_regex], "nginx", "80", None) == []
    assert proxy_problems([cookie_regex], "haproxy", "127.0.0.1:80", None) == []
    assert (
        "cannot match one cookie's value by regex"
        in proxy_problems([cookie_regex], "traefik", None, "Host(`a`)")[0]
    )
    assert "needs the proxy's listen" in proxy_problems([BETA], "nginx", None, None)[0]
    assert "needs the proxy's router_rule" in proxy_problems([BETA], "traefik", None, None)[0]


POOL = [PoolServer(i, f"10.0.0.{i}", 80, "v2" if i == 1 else "v1") for i in range(1, 6)]


@pytest.mark.parametrize("state", [State.MONITORING, State.WAITING_FOR_APPROVAL, State.PAUSED])
def test_ab_routes_by_rule_while_testing(state: State) -> None:
    """While the test runs the canary takes only rule-matched requests: it carries the rules and has no
    share of the split; stable servers split everything else."""
    backends = AB().backends(AB_CONFIG, state, POOL, frozenset({1}), "v2", 100.0, None, 1000)
    assert [(b.server_id, b.cohort, b.match) for b in backends] == [
        (1, "canary", (BETA, PRO)),
        *((i, "stable", ()) for i in range(2, 6)),
    ]
    assert canary_share(backends) == 0.0
    assert AB().expected_share(backends) is None


def test_ab_routes_like_a_canary_outside_the_test() -> None:
    """Deploying, promoting and rolling back serve what a canary's would; a canary not yet on the new
    version gets no rules (paused while deploying)."""
    canary = Canary()
    for state in (State.PENDING, State.DEPLOYING, State.PROMOTING, State.ROLLING_BACK, State.COMPLETED):
        got = AB().backends(AB_CONFIG, state, POOL, frozenset({1}), "v2", 0.0, 2, 1000)
        assert got == canary.backends(AB_CONFIG, state, POOL, frozenset({1}), "v2", 0.0, 2, 1000)
    not_ready = [PoolServer(1, "10.0.0.1", 80, "v1"), *POOL[1:]]
    paused = AB().backends(AB_CONFIG, State.PAUSED, not_ready, frozenset({1}), "v2", 100.0, None, 1000)
    assert all(b.cohort == "stable" and not b.match for b in paused)


def test_backend_json_round_trip() -> None:
    """A rule-bound backend survives the database (proxy_applied); one without rules stores as before."""
    bound = Backend(1, "10.0.0.1", 80, 1, "canary", (BETA, MOBILE))
    assert Backend.from_json(bound.to_json()) == bound
    plain = Backend(2, "10.0.0.2", 80, 3, "stable")
    assert plain.to_json() == {
        "server_id": 2,
        "host": "10.0.0.2",
        "port": 80,
        "weight": 3,
        "cohort": "stable",
    }


def test_strategy_problems() -> None:
    """The strategy's own rules; a canary deployment ignores an ab block inherited from the application."""
    assert problems("canary", {}, CanaryConfig()) == []
    assert problems("ab", {"ab": {}}, AB_CONFIG) == []
    assert [loc for loc, _ in problems("ab", {"stages": [10]}, CanaryConfig())] == [
        ("body", "config", "ab"),
        ("body", "config", "stages"),
    ]
    assert strategy_for("canary").effective(AB_CONFIG).ab is None
    assert strategy_for("ab").effective(AB_CONFIG).stages == [100.0]
    with pytest.raises(ValueError, match="not available"):
        strategy_for("linear")


def test_each_strategy_drops_the_other_strategies_blocks() -> None:
    """Blocks inherited from the application's defaults that belong to another strategy never reach a
    deployment's settings (a deployment's own are refused by `problems`)."""
    every = AB_CONFIG.model_copy(
        update={
            "rolling": CanaryConfig.model_validate({"rolling": {"batch_size": 2}}).rolling,
            "mirror": CanaryConfig.model_validate({"mirror": {"percent": 20}}).mirror,
            "blue_green": CanaryConfig.model_validate({"blue_green": {"keep_old": 60}}).blue_green,
        }
    )
    kept = {
        name: {block for block in STRATEGY_BLOCKS if getattr(strategy_for(name).effective(every), block)}
        for name in ("canary", "ab", "rolling", "mirror", "blue_green")
    }
    assert kept == {
        "canary": set(),
        "ab": {"ab"},
        "rolling": {"rolling"},
        "mirror": {"mirror"},
        "blue_green": {"blue_green"},
    }


@pytest.mark.parametrize("strategy", ["ab", "rolling", "mirror", "blue_green"])
@pytest.mark.parametrize("checks", [[[]], [None], ["x"], [{"stages": [10]}], "x", {"stages": []}])
def test_raw_bodies_of_any_shape_are_read_without_error(strategy: str, checks: object) -> None:
    """A body that failed validation is read as sent (the 422 lists its strategy's problems too): a check of
    any shape gives a problem or none, never an exception (schemathesis found `checks: [[]]` giving a 500)."""
    own = {"checks": checks, "approve_before": checks, "mirror": {"then": "stop"}}
    found = problems(strategy, own, None)
    expected = ("body", "config", "checks", 0, "stages")
    assert (expected in [loc for loc, _ in found]) == (checks == [{"stages": [10]}]), found
