"""Checks shared by the proxy adapters: values they write (validated by the API already, checked again)
and the access-log lines they read."""

from __future__ import annotations

import re


def reject_syntax(value: str, what: str, forbidden: re.Pattern[str], proxy: str) -> str:
    """`value` unchanged, or ValueError if it is empty or holds a character `forbidden` matches."""
    if not value or forbidden.search(value):
        raise ValueError(
            f"{what} {value[:80]!r} contains characters that are not allowed in {proxy} configuration"
        )
    return value


def check_int(value: object, what: str, low: int, high: int | None = None) -> int:
    """`value` if it is an int (not a bool) within [low, high], else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, not {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{what} must be {bound}, got {value}")
    return value


def logged_before(entry: dict[str, object], since: float) -> bool:
    """True for a log line whose `time` (epoch seconds) is before `since`: traffic of an earlier split."""
    try:
        return float(str(entry.get("time", ""))) < since
    except ValueError:
        return False
