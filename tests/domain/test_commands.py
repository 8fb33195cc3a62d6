"""Command templates: placeholders substituted shell-quoted, nothing can break out."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from canaryd.domain.commands import check_template, render_command

HOSTILE = [
    "; rm -rf /",
    "$(id)",
    "`id`",
    "a'b",
    'a"b',
    "'; echo pwned; '",
    "line1\nline2",
    "\\",
    "${HOME}",
    "* ?",
    "",
    "{app}",
    "-rf",
    "é ✓",
]

BASE = {"app": "shop", "version": "1.2.3", "host": "10.0.0.5", "port": "8080", "server": "web-1"}


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("placeholder", ["app", "version", "host", "port", "server"])
def test_hostile_values_stay_one_word(placeholder: str, value: str) -> None:
    """Whatever a value contains, the shell sees it as exactly one word, unchanged."""
    values = {**BASE, placeholder: value}
    rendered = render_command(f"deploy --to {{{placeholder}}} --then done", values)
    assert shlex.split(rendered) == ["deploy", "--to", value, "--then", "done"]


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("systemctl restart {app}", ["systemctl", "restart", "shop"]),
        (
            "/opt/deploy.sh {app} {version} {host}:{port}",
            ["/opt/deploy.sh", "shop", "1.2.3", "10.0.0.5:8080"],
        ),
        ("echo --version={version}", ["echo", "--version=1.2.3"]),
        ("echo {{app}}", ["echo", "{shop}"]),  # doubled braces are not an escape
        ("echo { app", ["echo", "{", "app"]),  # a lone brace is text
        ("run {server} && run {server}", ["run", "web-1", "&&", "run", "web-1"]),
    ],
)
def test_render(template: str, expected: list[str]) -> None:
    """Known placeholders are substituted wherever they appear."""
    assert shlex.split(render_command(template, BASE)) == expected


def test_values_are_not_substituted_twice() -> None:
    """A value that looks like a placeholder stays as it is."""
    assert render_command("echo {app} {version}", {**BASE, "app": "{version}"}) == "echo '{version}' 1.2.3"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("deploy {name}", r"unknown placeholder \{name\}"),
        ("deploy {}", r"unknown placeholder \{\}"),
        ('deploy "{version}"', r"\{version\} must not be inside quotes"),
        ("deploy '{version}'", r"\{version\} must not be inside quotes"),
        ("deploy \\{version}", r"\{version\} must not be inside quotes or after a backslash"),
        ("sh -c 'deploy {app}'", r"\{app\} must not be inside quotes"),
    ],
)
def test_bad_templates(template: str, message: str) -> None:
    """Unknown placeholders, and placeholders where quoting would not hold, are refused."""
    with pytest.raises(ValueError, match=message):
        check_template(template)
    with pytest.raises(ValueError, match=message):
        render_command(template, BASE)


def test_quotes_elsewhere_are_fine() -> None:
    """Quoted text around (not containing) placeholders is allowed."""
    rendered = render_command("""echo "it's" '$HOME' {app} "done\\"" """, BASE)
    assert shlex.split(rendered) == ["echo", "it's", "$HOME", "shop", 'done"']


def test_missing_value() -> None:
    """A placeholder without a value raises."""
    with pytest.raises(ValueError, match=r"no value for placeholder \{host\}"):
        render_command("ping {host}", {"app": "shop"})


def test_nul_byte() -> None:
    """A value with a NUL byte cannot be passed to a shell."""
    with pytest.raises(ValueError, match="NUL"):
        render_command("echo {app}", {"app": "a\x00b"})


@pytest.mark.parametrize("value", HOSTILE)
def test_real_shell_sees_the_value(value: str) -> None:
    """/bin/sh receives each hostile value as one argument, byte for byte, and runs nothing else."""
    rendered = render_command("printf '%s\\0' {version} {app}", {**BASE, "version": value})
    out = subprocess.run(["/bin/sh", "-c", rendered], capture_output=True, check=True, timeout=10).stdout
    assert out.decode().split("\0")[:-1] == [value, "shop"]
