"""Last-line checks every renderer applies to the values it writes (the API validated them already)."""

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
