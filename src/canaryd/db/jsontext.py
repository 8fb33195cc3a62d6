"""JSON text for the database's JSON columns and the event bus, encoded with orjson.

A monitoring check writes its ~5 KB of figures four times (the deployment's snapshot, the event, and both on
the bus as the event and the status): with the standard library's encoder that was ~11 % of a worker's CPU
per tick (docs/benchmarks.md, "Controller scale"); orjson encodes the same text ~10 times faster. The
output is the standard library's with two differences, both for values PostgreSQL's `json` refuses
anyway: NaN and infinities become null, and integers must fit in 64 bits.
"""

from __future__ import annotations

from typing import Any

import orjson

#: Like json.dumps(..., default=str): datetimes and dataclasses go through `default` too, and dict keys
#: that are not strings (ints, enums) become strings.
_STR_KEYS_LIKE_STDLIB = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_LIKE_STDLIB = orjson.OPT_NON_STR_KEYS | _STR_KEYS_LIKE_STDLIB


# Dicts with keys that are not strings are rare (the values are mostly the domain's to_json(), keyed by
# strings), and orjson's OPT_NON_STR_KEYS makes every dump ~1.8 times slower (a check's 5 KB snapshot:
# 4.1 against 7.6 µs): each dump is tried without it first, and again with it only when a key refuses. The
# text is the same either way.


def column_text(value: Any) -> str:
    """A JSON column's value as text (SQLAlchemy's `json_serializer`); a value JSON cannot hold raises."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def message_text(message: Any) -> str:
    """A message as compact JSON text, anything JSON has no type for written as its str()."""
    try:
        return orjson.dumps(message, default=str, option=_STR_KEYS_LIKE_STDLIB).decode()
    except orjson.JSONEncodeError:
        return orjson.dumps(message, default=str, option=_LIKE_STDLIB).decode()


def canonical(value: Any) -> bytes:
    """`value` as JSON with sorted keys: equal values give equal bytes (a cache key)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def parse(text: str | bytes) -> Any:
    return orjson.loads(text)


__all__ = ["canonical", "column_text", "message_text", "parse"]
