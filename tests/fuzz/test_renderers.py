"""Property-based fuzzing (hypothesis) of every renderer that turns user values into proxy configuration or
shell commands: whatever text a field holds, the renderer either refuses it (ValueError) or emits output
that parses back to exactly the intended values, with no extra directive, word or command.

The renderers are fed directly (ProxySpec.model_construct skips pydantic), so this tests their own
defence, not the API's validation in front of them (tests/api/test_validation.py covers that).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.fixtures.nginx import free_port, nginx_binary

from canaryd.domain.commands import PLACEHOLDERS, render_command
from canaryd.domain.config import ProxySpec
from canaryd.domain.types import Backend
from canaryd.proxies.base import RouteTable
from canaryd.proxies.nginx import render_nginx

#: Characters that carry nginx or shell syntax, mixed into otherwise plausible values so that many
#: generated values are *almost* valid (the interesting ones).
HOSTILE = ";{}#'\"`$\\\n\r\t &|<>()*?![]~=%,:@\x00\x7f\u2028\u00a0"
PLAUSIBLE = "abcxyz019.-_/:[]"
hostile_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.sampled_from(PLAUSIBLE + HOSTILE), max_size=40),
    st.text(alphabet=st.sampled_from(PLAUSIBLE), min_size=1, max_size=20).flatmap(
        lambda s: st.tuples(st.just(s), st.sampled_from(HOSTILE), st.text(max_size=8)).map("".join)
    ),
)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
hosts = st.one_of(
    ipv4, ipv6, st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z]{2,5}){0,2}", fullmatch=True), hostile_text
)
listens = st.one_of(
    st.integers(1, 65535).map(str),
    st.tuples(ipv4, st.integers(1, 65535)).map(lambda t: f"{t[0]}:{t[1]}"),
    hostile_text,
    st.integers(1, 65535)
    .map(lambda p: f"127.0.0.1:{p}")
    .flatmap(lambda s: st.sampled_from(HOSTILE).map(lambda c: s + c + "listen 9")),
)
paths = st.one_of(
    st.from_regex(r"/[a-z0-9_./@+-]{1,30}", fullmatch=True),
    hostile_text,
    st.from_regex(r"/[a-z]{1,8}", fullmatch=True).flatmap(
        lambda s: st.sampled_from(HOSTILE).map(lambda c: f'{s}{c}" ; include /etc/passwd')
    ),
)


# --- a small nginx tokenizer, to read the rendered configuration back ------------------------------------


@dataclass(frozen=True)
class Directive:
    context: tuple[str, ...]  # enclosing block names, outermost first
    name: str
    args: tuple[str, ...]


def nginx_directives(text: str) -> list[Directive]:
    """Parses nginx configuration the way nginx's own tokenizer does (words, quotes, comments, blocks)."""
    out: list[Directive] = []
    stack: list[str] = []
    words: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch == "#":
            end = text.find("\n", i)
            i = len(text) if end < 0 else end + 1
        elif ch in "\"'":
            j, buf = i + 1, []
            while text[j] != ch:
                if text[j] == "\\" and text[j + 1] in (ch, "\\"):
                    j += 1
                buf.append(text[j])
                j += 1
            words.append("".join(buf))
            i = j + 1
        elif ch == ";":
            out.append(Directive(tuple(stack), words[0], tuple(words[1:])))
            words = []
            i += 1
        elif ch == "{":
            out.append(Directive(tuple(stack), words[0], tuple(words[1:])))
            stack.append(words[0])
            words = []
            i += 1
        elif ch == "}":
            assert not words, f"unterminated directive {words}"
            stack.pop()
            i += 1
        else:
            m = re.compile(r"[^\s;{}\"'#]+").match(text, i)
            assert m is not None
            words.append(m.group())
            i = m.end()
    assert not stack and not words, "unbalanced configuration"
    return out


def expected_address(host: str, port: int) -> str:
    try:
        ip = ipaddress.ip_address(host.strip("[]") if host.startswith("[") else host)
    except ValueError:
        return f"{host.lower()}:{port}"
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def spec_of(listen: str | None, access_log: str | None, keepalive: int = 0) -> ProxySpec:
    return ProxySpec.model_construct(
        kind="nginx",
        server_id=1,
        config_path="/tmp/app.conf",
        reload_command="true",
        test_command=None,
        listen=listen,
        access_log=access_log,
        runtime_socket=None,
        max_weight=None,
        upstream_keepalive=keepalive,
        sticky=False,
        force_header=None,
        api_url=None,
        metrics_url=None,
        provider="file",
    )


def check_nginx_readback(table: RouteTable, spec: ProxySpec, text: str) -> None:
    """The rendered file holds exactly the intended directives with exactly the intended values."""
    d = nginx_directives(text)
    app = table.app_id
    upstream = [x for x in d if x.context == ("upstream",)]
    assert [x.name for x in upstream] == ["server"] * len(table.backends) + (
        ["keepalive"] if spec.upstream_keepalive else []
    )
    for x, b in zip(upstream, table.backends, strict=False):
        assert x.args == (expected_address(b.host, b.port), f"weight={b.weight}", "max_fails=0")
    top = [(x.name, x.args[:1]) for x in d if x.context == ()]
    want_top = [("log_format", (f"canaryd_{app}",)), ("upstream", (f"canaryd_app_{app}",))]
    if spec.listen is not None:
        want_top.append(("server", ()))
    assert top == want_top
    if spec.listen is None:
        return
    in_server = [x for x in d if x.context == ("server",)]
    assert [x.name for x in in_server] == ["listen"] + (["access_log"] if spec.access_log else []) + [
        "location",
        "location",
    ]
    assert in_server[0].args == (spec.listen,)
    if spec.access_log:
        assert in_server[1].args == (spec.access_log, f"canaryd_{app}")
    inner = [x.name for x in d if x.context == ("server", "location")]
    assert inner == ["access_log", "default_type", "add_header", "return", "proxy_pass"] + (
        ["proxy_http_version", "proxy_set_header"] if spec.upstream_keepalive else []
    ) + ["proxy_set_header", "proxy_next_upstream"]
    # Comments stay comments: exactly the two header lines, each on its own line.
    comments = [ln for ln in text.splitlines() if ln.lstrip().startswith("#")]
    assert len(comments) == 2 and all("\n" not in c and "\r" not in c for c in comments)


tables = st.builds(
    lambda app_id, name, backends, gen: RouteTable(app_id, name, tuple(backends), gen),
    st.integers(0, 10**6),
    hostile_text,
    st.lists(
        st.builds(
            Backend,
            st.integers(1, 1000),
            hosts,
            st.integers(1, 65535),
            st.integers(1, 1000),
            st.sampled_from(["canary", "stable"]),
        ),
        min_size=1,
        max_size=4,
        unique_by=lambda b: b.host,
    ),
    st.integers(0, 10**9),
)


@settings(max_examples=600, deadline=None)
@given(tables, st.one_of(st.none(), listens), st.one_of(st.none(), paths), st.sampled_from([0, 8]))
def test_nginx_renderer_never_emits_injected_syntax(
    table: RouteTable, listen: str | None, access_log: str | None, keepalive: int
) -> None:
    """Hostile hosts, names, listen values and log paths are refused, or read back as exactly themselves."""
    spec = spec_of(listen, access_log, keepalive)
    try:
        text = render_nginx(table, spec)
    except ValueError:
        return
    check_nginx_readback(table, spec, text)


NGINX_RUNS: list[int] = []


@pytest.fixture(scope="module")
def nginx_test_dir() -> Iterator[str]:
    """A main nginx.conf that includes one file, for `nginx -t`."""
    nginx_binary()
    d = tempfile.mkdtemp(prefix="canaryd-fuzz-nginx-")
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(
            f"pid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ }}\n"
            f"http {{ access_log off; include {d}/app.conf; }}\n"
        )
    os.makedirs(os.path.join(d, "logs"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
@given(
    st.builds(
        lambda app_id, name, backends, gen: RouteTable(app_id, name, tuple(backends), gen),
        st.integers(0, 10**6),
        hostile_text,
        st.lists(
            st.builds(
                Backend,
                st.integers(1, 1000),
                st.one_of(ipv4, ipv4, ipv6, hostile_text),
                st.integers(1, 65535),
                st.integers(1, 1000),
                st.sampled_from(["canary", "stable"]),
            ),
            min_size=1,
            max_size=2,
            unique_by=lambda b: b.host,
        ),
        st.integers(0, 10**9),
    ),
    st.one_of(st.just(""), st.just(""), st.sampled_from(HOSTILE).map(lambda c: c + "listen 9")),
    st.one_of(st.none(), st.from_regex(r"[a-z0-9_.@+-]{1,20}", fullmatch=True), hostile_text),
)
def test_nginx_accepts_every_rendered_file(
    nginx_test_dir: str, table: RouteTable, listen_suffix: str, log_name: str | None
) -> None:
    """Whatever the renderer emits, the real `nginx -t` accepts, and `nginx -T` shows no extra directive."""
    # nginx -t binds the listen address and creates the access log: both must be ours.
    access_log = None if log_name is None else f"{nginx_test_dir}/logs/{log_name}"
    spec = spec_of(f"127.0.0.1:{free_port()}{listen_suffix}", access_log)
    try:
        text = render_nginx(table, spec)
    except ValueError:
        return
    path = os.path.join(nginx_test_dir, "app.conf")
    with open(path, "w") as f:
        f.write(text)
    proc = subprocess.run(
        [nginx_binary(), "-T", "-q", "-c", os.path.join(nginx_test_dir, "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    unresolved = re.search(r'host not found in upstream "([^"]+)"', proc.stderr)
    unopened = re.search(r'open\(\) "([^"]*)" failed', proc.stderr)
    if unresolved and unresolved.group(1) in {expected_address(b.host, b.port) for b in table.backends}:
        pass  # a well-formed hostname that does not resolve here: nginx parsed it as the one address
    elif unopened and unopened.group(1) == access_log:
        pass  # a well-formed path that is a directory or in a missing one: nginx read it as the one path
    else:
        assert proc.returncode == 0, f"nginx -t refused:\n{proc.stderr}\n{text}"
        NGINX_RUNS.append(1)
    check_nginx_readback(table, spec, text)


# --- shell commands ---------------------------------------------------------------------------------------

values = st.fixed_dictionaries({name: hostile_text for name in sorted(PLACEHOLDERS)})
templates = st.lists(
    st.one_of(
        st.sampled_from(sorted(PLACEHOLDERS)).map(lambda n: "{" + n + "}"),
        st.sampled_from(["deploy", "--flag", "x=1", "'lit eral'", '"quoted"', "a\\ b"]),
    ),
    min_size=1,
    max_size=6,
).map(lambda words: "run " + " ".join(words))


def expected_words(template: str, vals: dict[str, str]) -> list[str]:
    """The words the shell should see: the template's own words, each placeholder exactly its value."""
    out = []
    for word in shlex.split(template):
        m = re.fullmatch(r"\{(\w+)\}", word)
        out.append(vals[m.group(1)] if m else word)
    return out


@settings(max_examples=800, deadline=None)
@given(templates, values)
def test_command_values_are_single_words(template: str, vals: dict[str, str]) -> None:
    """Each placeholder becomes exactly one shell word equal to its value, whatever the value holds."""
    try:
        rendered = render_command(template, vals)
    except ValueError as exc:
        assert any("\x00" in v for v in vals.values()), exc
        return
    assert shlex.split(rendered) == expected_words(template, vals)


@settings(max_examples=60, deadline=None)
@given(templates, values)
def test_command_through_a_real_shell(template: str, vals: dict[str, str]) -> None:
    """Run through /bin/sh, `printf` prints each value back unchanged: no expansion, no second command."""
    shell_template = template.replace("run ", "printf '%s\\0' ", 1)
    try:
        rendered = render_command(shell_template, vals)
    except ValueError:
        assert any("\x00" in v for v in vals.values())
        return
    proc = subprocess.run(["/bin/sh", "-c", rendered], capture_output=True, timeout=10)
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout.decode("utf-8", "surrogateescape").split("\0")[:-1]
    assert printed == expected_words(template, vals)[1:]


def test_nginx_t_really_ran() -> None:
    """The `nginx -t` property above accepted a fair sample of rendered files (it is not vacuous)."""
    # Most generated tables carry hostile text the renderer refuses: 11-23 of the 150 examples reached
    # `nginx -t` in six runs, so 10 failed now and then; 5 still shows the property was not vacuous.
    assert len(NGINX_RUNS) >= 5, NGINX_RUNS


# --- HAProxy and Traefik ----------------------------------------------------------------------------------


def spec_for(kind: str, listen: str | None, access_log: str | None, **more: object) -> ProxySpec:
    return spec_of(listen, access_log).model_copy(update={"kind": kind, "router_rule": None, **more})


@settings(max_examples=500, deadline=None)
@given(tables, st.one_of(st.none(), listens), st.one_of(st.none(), paths))
def test_haproxy_renderer_never_emits_injected_syntax(
    table: RouteTable, listen: str | None, access_log: str | None
) -> None:
    """Hostile values are refused, or the HAProxy file has exactly the intended lines and words."""
    from canaryd.proxies.haproxy import render_haproxy

    weights = [b for b in table.backends if b.weight <= 256]
    table = RouteTable(table.app_id, table.app_name, tuple(weights) or table.backends[:0], table.generation)
    spec = spec_for("haproxy", listen, access_log)
    try:
        text = render_haproxy(table, spec)
    except ValueError:
        return
    lines = text.split("\n")[:-1]
    frontend = (7 + (2 if access_log else 0)) if listen is not None else 0
    assert len(lines) == 2 + frontend + 6 + len(table.backends), text
    assert all(ln.startswith("# ") for ln in lines[:2]) and not any("\r" in ln for ln in lines)
    servers = [ln.split("#", 1)[0].split() for ln in lines if ln.startswith("    server ")]
    assert servers == [
        ["server", f"s{b.server_id}", expected_address(b.host, b.port), "weight", str(b.weight)]
        for b in sorted(table.backends, key=lambda b: b.server_id)
    ]
    if listen is not None:
        bind = [ln.split() for ln in lines if ln.startswith("    bind ")]
        assert len(bind) == 1 and len(bind[0]) == 2


@settings(max_examples=500, deadline=None)
@given(tables, st.one_of(st.none(), hostile_text, st.just("Host(`shop.example`)")))
def test_traefik_renderer_keeps_values_in_place(table: RouteTable, rule: str | None) -> None:
    """Hostile hosts and router rules are refused, or land as exactly one URL / the rule itself."""
    import json

    from canaryd.proxies.traefik import render_traefik, server_service_name

    spec = spec_for("traefik", None, None, router_rule=rule)
    try:
        config = render_traefik(table, spec)
    except ValueError:
        return
    back = json.loads(json.dumps(config))
    services = back["http"]["services"]
    for b in table.backends:
        urls = services[server_service_name(table.app_id, b.server_id)]["loadBalancer"]["servers"]
        assert urls == [{"url": f"http://{expected_address(b.host, b.port)}"}]
        assert "/" not in expected_address(b.host, b.port) and "?" not in expected_address(b.host, b.port)
    if rule is not None:
        assert back["http"]["routers"][f"canaryd-app-{table.app_id}"]["rule"] == rule or any(
            r["rule"] == rule for r in back["http"]["routers"].values()
        )
