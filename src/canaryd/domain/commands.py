"""Operator command templates with values substituted, shell-quoted.

The template grammar is only ``{name}``, with name one of ``app version host port server``. Braces are not
doubled to escape them (``{{`` has no meaning). Every value is passed through ``shlex.quote``, so it reaches
the command as exactly one word, whatever it contains. That holds only where the shell reads the quote
marks, so a placeholder inside quotes of the template (``"{version}"``) is refused: inside double quotes
the value's single quotes would be literal and ``$(...)`` in it would run.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

PLACEHOLDERS = frozenset({"app", "version", "host", "port", "server"})

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def _quoted_placeholders(template: str) -> list[str]:
    """Placeholders that sit inside quotes or right after a backslash, where quoting would not hold."""
    found: list[str] = []
    quote: str | None = None  # "'" or '"' while inside such quotes
    i = 0
    while i < len(template):
        ch = template[i]
        match = _PLACEHOLDER.match(template, i) if ch == "{" else None
        if match:
            if quote is not None:
                found.append(match.group(1))
            i = match.end()
            continue
        if ch == "\\" and quote != "'":
            nxt = _PLACEHOLDER.match(template, i + 1)
            if nxt:  # `\{app}` would escape the first character of the quoted value
                found.append(nxt.group(1))
            i += 2
            continue
        if quote is None and ch in "'\"":
            quote = ch
        elif ch == quote:
            quote = None
        i += 1
    return found


def check_template(template: str) -> None:
    """Raises ValueError if `template` has an unknown placeholder or one inside quotes."""
    for name in _PLACEHOLDER.findall(template):
        if name not in PLACEHOLDERS:
            known = ", ".join("{" + p + "}" for p in sorted(PLACEHOLDERS))
            raise ValueError(f"unknown placeholder {{{name}}} in command; use {known}")
    for name in _quoted_placeholders(template):
        raise ValueError(
            f"placeholder {{{name}}} must not be inside quotes or after a backslash; "
            "values are shell-quoted for you"
        )


def render_command(template: str, values: Mapping[str, str]) -> str:
    """`template` with every ``{name}`` replaced by its value, shell-quoted."""
    check_template(template)
    for name, value in values.items():
        if "\x00" in str(value):
            raise ValueError(f"value of {{{name}}} contains a NUL byte, which no command line can carry")

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ValueError(f"no value for placeholder {{{name}}}")
        return shlex.quote(str(values[name]))

    # One pass: a value that itself contains "{app}" is never substituted again.
    return _PLACEHOLDER.sub(substitute, template)


__all__ = ["PLACEHOLDERS", "check_template", "render_command"]
