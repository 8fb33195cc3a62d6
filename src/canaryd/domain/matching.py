"""A/B match rules (strategy `ab`): what a rule may say, so that all three proxies read it the same way.

A rule names a request header or a cookie and either an exact value (`equals`, case-sensitive) or a regex
(`regex`, unanchored: it matches when it is found anywhere in the value, as nginx's `~`, HAProxy's `-m reg`
and Traefik's `HeaderRegexp` all search). The rules here are strict because every value reaches proxy
configuration, and because the same regex must mean the same thing to PCRE (nginx, HAProxy) and to Go's
RE2 (Traefik):

- names: headers are letters, digits and '-' (as `force_header`); cookies letters, digits and '_' (nginx
  reads a cookie through `$cookie_<name>`, and a variable name stops at any other character);
- `equals` values: letters, digits and `_ . ~ : / + = @ % ! * , -` (no space, quote or backslash);
- regexes: printable ASCII without quotes or backticks (each proxy quotes the pattern with one of them),
  compiled here, and built only from constructs PCRE and RE2 read alike: no backreferences, lookaround,
  atomic groups, possessive quantifiers, named groups, `\\A \\Z \\z \\x \\p \\Q` escapes, POSIX classes or
  `{,n}`; repetition counts at most 1000 (RE2's limit); the only inline flag is `i`;
- a regex that matches the empty value is refused: nginx reads a missing header as empty and would send
  every request to the canary, while HAProxy and Traefik would send none.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

from canaryd.domain.addresses import HEADER_NAME
from canaryd.domain.types import MatchRule

COOKIE_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
EQUALS_VALUE = re.compile(r"[A-Za-z0-9_.~:/+=@%!*,-]{1,128}")
MAX_REGEX = 256
MAX_RULES = 10
#: After a backslash: the classes and the punctuation every flavour reads as itself.
_ESCAPES = frozenset("dDwWsSbB") | frozenset(".-/()[]{}*+?|^$\\")
_COUNTED = re.compile(r"\{(\d{1,4})(?:,(\d{0,4}))?\}")
_QUOTES = frozenset("\"'`")


def name_problems(source: str, name: str) -> list[str]:
    """Problems of a rule's header or cookie name."""
    if source == "header" and not HEADER_NAME.fullmatch(name):
        return [f"header {name[:80]!r} must be letters, digits and '-', at most 64"]
    if source == "cookie" and not COOKIE_NAME.fullmatch(name):
        return [f"cookie {name[:80]!r} must be letters, digits and '_', at most 64"]
    return []


def equals_problems(value: str) -> list[str]:
    if not EQUALS_VALUE.fullmatch(value):
        return [
            f"equals {value[:80]!r} must be 1 to 128 letters, digits or _ . ~ : / + = @ % ! * , - "
            "(use regex for anything else)"
        ]
    return []


def regex_problems(pattern: str) -> list[str]:
    """Every reason `pattern` cannot be used as an A/B regex on all three proxies."""
    if not 0 < len(pattern) <= MAX_REGEX:
        return [f"regex must be 1 to {MAX_REGEX} characters"]
    if any(not " " <= c <= "~" for c in pattern):
        return [f"regex {pattern[:80]!r} must be printable ASCII (no control characters)"]
    problems: list[str] = []
    if _QUOTES & set(pattern):
        problems.append(f"regex {pattern[:80]!r} must not contain quotes or backticks")
    problems += _flavour_problems(pattern)
    try:
        with warnings.catch_warnings():  # Python's own hints ("possible nested set") are not the user's
            warnings.simplefilter("ignore")
            compiled = re.compile(pattern)
    except re.error as exc:
        problems.append(f"regex {pattern[:80]!r} does not compile: {exc}")
    else:
        if not problems and compiled.search("") is not None:
            problems.append(
                f"regex {pattern[:80]!r} matches an empty value: a request without the header or cookie "
                "would count as matching on nginx and not elsewhere"
            )
    return problems


def _flavour_problems(pattern: str) -> list[str]:
    """Constructs PCRE and RE2 do not read alike (or one of them lacks), found by one pass over the text."""
    found: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i + 1 : i + 2]
            if nxt not in _ESCAPES:
                found.append(f"\\{nxt} (only \\d \\D \\w \\W \\s \\S \\b \\B and escaped punctuation)")
            i += 2
        elif in_class:
            if c == "[":
                found.append("'[' inside a character class (POSIX classes and nested sets differ)")
            in_class = c != "]"
            i += 1
        elif c == "[":
            i += 1 + (pattern[i + 1 : i + 2] == "^")
            i += pattern[i : i + 1] == "]"  # a ']' first in a class is the character itself
            in_class = True
        elif c == "(":
            rest = pattern[i + 1 : i + 4]
            if rest.startswith("?") and not (rest.startswith("?:") or rest in ("?i)", "?i:")):
                found.append(f"({rest}... (only (?: ) groups and the (?i) flag)")
            i += 1
        elif c == "{":
            counted = _COUNTED.match(pattern, i)
            if counted is None:
                found.append("'{' that is not a repetition {n}, {n,} or {n,m} (write \\{ for the character)")
                i += 1
                continue
            if any(int(g) > 1000 for g in counted.groups() if g):
                found.append("a repetition count above 1000 (RE2's limit)")
            i = _after_quantifier(pattern, counted.end(), found)
        elif c in "*+?":
            i = _after_quantifier(pattern, i + 1, found)
        else:
            i += 1
    return [
        f"regex {pattern[:80]!r} uses {what}, which PCRE (nginx, HAProxy) and RE2 (Traefik) do not read alike"
        for what in dict.fromkeys(found)
    ]


def _after_quantifier(pattern: str, at: int, found: list[str]) -> int:
    """Past a quantifier's lazy marker; a possessive one (RE2 has none) is reported."""
    if pattern[at : at + 1] == "+":
        found.append("a possessive quantifier (*+ ++ ?+ }+)")
        return at + 1
    return at + (pattern[at : at + 1] == "?")


def rule_problems(rule: MatchRule) -> list[str]:
    """Every problem of one rule, each prefixed with what it is about."""
    problems = name_problems(rule.source, rule.name)
    problems += equals_problems(rule.value) if rule.op == "equals" else regex_problems(rule.value)
    return problems


def proxy_problems(
    rules: Sequence[MatchRule], kind: str, listen: str | None, router_rule: str | None
) -> list[str]:
    """What this application's proxy cannot do with these rules."""
    found = []
    if kind in ("nginx", "haproxy") and listen is None:
        found.append(
            f"an A/B test on {kind} needs the proxy's listen setting: the rules route in the server block "
            "canaryd writes"
        )
    if kind == "traefik" and router_rule is None:
        found.append("an A/B test on Traefik needs the proxy's router_rule: the rule routers extend it")
    if kind == "traefik":
        found += [
            f"match {i + 1}: Traefik cannot match one cookie's value by regex (it only has regexes over the "
            f"whole Cookie header); use equals for cookie {r.name!r}, or a header rule"
            for i, r in enumerate(rules)
            if r.source == "cookie" and r.op == "regex"
        ]
    return found


__all__ = [
    "COOKIE_NAME",
    "EQUALS_VALUE",
    "MAX_RULES",
    "equals_problems",
    "name_problems",
    "proxy_problems",
    "regex_problems",
    "rule_problems",
]
