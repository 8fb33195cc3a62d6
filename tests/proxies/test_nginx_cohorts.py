"""Stickiness, forced routing and fine splits on a real nginx master with real sample apps on 127.0.0.x.

Clients are observed from the outside: each simulated user has its own cookie jar, and the version that
answered is read from the app's X-Version header."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import httpx
import pytest

from canaryd.domain.split import split_weights
from canaryd.domain.types import Backend
from canaryd.proxies.base import RouteTable
from canaryd.proxies.nginx import NginxProxy, render_nginx
from canaryd.transports.local import LocalTransport

if TYPE_CHECKING:
    from tests.fixtures.apps import AppFleet, AppInstance
    from tests.fixtures.nginx import NginxInstance

pytestmark = pytest.mark.e2e

#: Requests per second through nginx at most (the machine is shared).
RATE = 200.0


@dataclass
class Fleet:
    canary: AppInstance
    stable: list[AppInstance]

    def table(self, generation: int, percentage: float, app_id: int = 1) -> RouteTable:
        """The route table domain.split gives for `percentage` (canary absent at 0 %)."""
        w = split_weights(1, len(self.stable), percentage, 1000)
        backends = [Backend(1, self.canary.host, self.canary.port, w.canary_weight, "canary")]
        backends += [
            Backend(i + 2, a.host, a.port, w.stable_weight, "stable") for i, a in enumerate(self.stable)
        ]
        return RouteTable(app_id, "shop", tuple(b for b in backends if b.weight), generation)


@pytest.fixture
def fleet(app_fleet: AppFleet) -> Fleet:
    """One canary at v2 on 127.0.0.2 and four stable instances at v1 on 127.0.0.3-6."""
    canary = app_fleet.start("127.0.0.2", "v2")
    return Fleet(canary, [app_fleet.start(f"127.0.0.{i}", "v1") for i in range(3, 7)])


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """The client canaryd would hand to the proxy adapter."""
    async with httpx.AsyncClient() as client:
        yield client


class Pacer:
    """Spaces requests of all clients so that together they stay under `rate` per second."""

    def __init__(self, rate: float = RATE) -> None:
        self.period = 1 / rate
        self.next_at = time.monotonic()

    async def wait(self) -> None:
        now = time.monotonic()
        at = max(now, self.next_at)
        self.next_at = at + self.period
        if at > now:
            await asyncio.sleep(at - now)


@dataclass
class Answer:
    status: int
    version: str
    set_cookie: str | None


async def user(
    url: str,
    requests: int,
    pacer: Pacer,
    headers: dict[str, str] | None = None,
    cookies: httpx.Cookies | None = None,
) -> tuple[list[Answer], httpx.Cookies]:
    """One user: `requests` sequential requests keeping its own cookies (a fresh connection each time)."""
    answers = []
    # A client per user for its cookie jar, all on one transport (a client of its own costs ~30 ms).
    client = httpx.AsyncClient(cookies=cookies, transport=TRANSPORT.get(), headers={"Connection": "close"})
    for _ in range(requests):
        await pacer.wait()
        r = await client.get(url, headers=headers)
        answers.append(Answer(r.status_code, r.headers.get("x-version", ""), r.headers.get("set-cookie")))
    return answers, client.cookies


TRANSPORT: ContextVar[httpx.AsyncHTTPTransport] = ContextVar("transport")


@pytest.fixture(autouse=True)
async def shared_transport() -> AsyncIterator[None]:
    """One connection-per-request transport shared by every simulated user of a test."""
    transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_keepalive_connections=0))
    token = TRANSPORT.set(transport)
    try:
        yield
    finally:
        TRANSPORT.reset(token)
        await transport.aclose()


async def applied(nginx: NginxInstance, http: httpx.AsyncClient, table: RouteTable, **spec: object) -> str:
    """Applies `table` with the given spec settings and waits until nginx serves it; returns the URL."""
    proxy = NginxProxy(LocalTransport(), nginx.spec(**spec), "127.0.0.1", http)
    await proxy.apply(table)
    assert await proxy.verify(table)
    return f"http://{nginx.listen}/"


async def test_sticky_users_keep_their_cohort_within_a_stage(
    nginx_instance: NginxInstance, fleet: Fleet, http: httpx.AsyncClient
) -> None:
    """At 25 %, 50 users × 10 requests: each sees one version, ≈25 % of them the canary; a new stage re-splits."""
    url = await applied(nginx_instance, http, fleet.table(1, 25), sticky=True)
    pacer = Pacer()
    users = await asyncio.gather(*(user(url, 10, pacer) for _ in range(50)))
    for answers, _ in users:
        assert all(a.status == 200 for a in answers)
        assert len({a.version for a in answers}) == 1, [a.version for a in answers]
        first, rest = answers[0], answers[1:]
        assert (
            first.set_cookie
            == f"canaryd_1={'c' if first.version == 'v2' else 's'}.1; Path=/; HttpOnly; SameSite=Lax"
        )
        assert all(a.set_cookie is None for a in rest), "a user with a valid cookie gets no new one"
    on_canary = sum(1 for answers, _ in users if answers[0].version == "v2")
    assert 9 <= on_canary <= 16, on_canary  # 12.5 expected; nginx's weighted round robin is nearly exact

    # Next stage (generation 2, 50 %): the old cookies are ignored, every user is split afresh, then sticks.
    await applied(nginx_instance, http, fleet.table(2, 50), sticky=True)
    again = await asyncio.gather(*(user(url, 6, pacer, cookies=jar) for _, jar in users))
    for answers, _ in again:
        assert len({a.version for a in answers}) == 1
        assert answers[0].set_cookie is not None and ".2;" in answers[0].set_cookie
        assert all(a.set_cookie is None for a in answers[1:])
    on_canary = sum(1 for answers, _ in again if answers[0].version == "v2")
    assert 20 <= on_canary <= 30, on_canary


async def test_new_users_follow_the_split(
    nginx_instance: NginxInstance, fleet: Fleet, http: httpx.AsyncClient
) -> None:
    """With stickiness on, requests without a cookie are still split by the weights (25 % ± 5 over 400)."""
    url = await applied(nginx_instance, http, fleet.table(1, 25), sticky=True, force_header="X-Canary")
    pacer = Pacer()
    answers = [
        a for answers, _ in await asyncio.gather(*(user(url, 1, pacer) for _ in range(400))) for a in answers
    ]
    share = 100 * sum(1 for a in answers if a.version == "v2") / len(answers)
    assert all(a.status == 200 for a in answers) and abs(share - 25) <= 5, share


@pytest.mark.parametrize("percentage", [10, 0], ids=["10 %", "0 % (no canary server)"])
async def test_forced_routing(
    nginx_instance: NginxInstance, fleet: Fleet, http: httpx.AsyncClient, percentage: float
) -> None:
    """`X-Canary: always` reaches the canary and `never` stable, whatever the split or the cookie; with no
    canary server in the pool `always` falls back to stable (200, never a 502). Forced requests get no cookie."""
    url = await applied(
        nginx_instance, http, fleet.table(3, percentage), sticky=True, force_header="X-Canary"
    )
    pacer = Pacer()
    always, _ = await user(url, 30, pacer, {"X-Canary": "always"})
    never, _ = await user(url, 30, pacer, {"X-Canary": "never"})
    canary_version = "v2" if percentage else "v1"
    assert [(a.status, a.version) for a in always] == [(200, canary_version)] * 30
    assert [(a.status, a.version) for a in never] == [(200, "v1")] * 30
    assert all(a.set_cookie is None for a in always + never)
    shouted, _ = await user(url, 10, pacer, {"X-Canary": "ALWAYS"})
    assert {a.version for a in shouted} == {canary_version}, "header values match case-insensitively"
    # A user holding a stable cookie who sets the header is still forced; one with an unknown value is not.
    jar = httpx.Cookies({"canaryd_1": "s.3"})
    forced, _ = await user(url, 5, pacer, {"X-Canary": "always"}, cookies=jar)
    assert {a.version for a in forced} == {canary_version}
    other, _ = await user(url, 5, pacer, {"X-Canary": "sometimes"}, cookies=jar)
    assert {a.version for a in other} == {"v1"}


async def test_cookie_names_the_server_that_answered_after_a_retry(
    nginx_instance: NginxInstance, fleet: Fleet, http: httpx.AsyncClient
) -> None:
    """When nginx retries a dead server, the cookie names the cohort of the one that answered ($upstream_addr's
    last entry), so the user is not pinned to a cohort it never saw."""
    fleet.stable[0].stop()  # refuses connections: nginx tries the next server
    url = await applied(nginx_instance, http, fleet.table(4, 50), sticky=True)
    pacer = Pacer()
    users = await asyncio.gather(*(user(url, 3, pacer) for _ in range(40)))
    for answers, _ in users:
        assert all(a.status == 200 for a in answers)
        cohort = "c" if answers[0].version == "v2" else "s"
        assert answers[0].set_cookie is not None and answers[0].set_cookie.startswith(
            f"canaryd_1={cohort}.4;"
        )
        assert len({a.version for a in answers}) == 1
    assert {answers[0].version for answers, _ in users} == {"v1", "v2"}


async def test_half_percent_stage(
    nginx_instance: NginxInstance, fleet: Fleet, http: httpx.AsyncClient
) -> None:
    """0.5 % with 1 canary and 4 stable servers: weights 4 and 199 give exactly 1/200; over 1000 requests the
    canary gets between 0 and 2 %."""
    table = fleet.table(5, 0.5)
    weights = {b.cohort: b.weight for b in table.backends}
    assert weights == {"canary": 4, "stable": 199}
    assert Fraction(weights["canary"], weights["canary"] + 4 * weights["stable"]) == Fraction(1, 200)
    text = render_nginx(table, nginx_instance.spec())
    assert text.count("weight=199 ") == 4 and text.count("weight=4 ") == 1
    url = await applied(nginx_instance, http, table)
    pacer = Pacer()
    answers = [
        a for answers, _ in await asyncio.gather(*(user(url, 100, pacer) for _ in range(10))) for a in answers
    ]
    canary = sum(1 for a in answers if a.version == "v2")
    assert all(a.status == 200 for a in answers) and len(answers) == 1000
    assert 0 <= canary <= 20, canary


@pytest.mark.parametrize(
    "spec",
    [
        {"sticky": True},
        {"force_header": "X-Beta-Tester"},
        {"sticky": True, "force_header": "X-Canary", "upstream_keepalive": 8},
        {"sticky": True, "force_header": "X-Canary", "listen": None},
    ],
    ids=["sticky", "forced", "both+keepalive", "both without server block"],
)
async def test_nginx_accepts_every_variant(
    nginx_instance: NginxInstance, fleet: Fleet, http: httpx.AsyncClient, spec: dict[str, object]
) -> None:
    """`nginx -t` and the reload accept the cohort routing in each combination, at 0, 10 and 100 %."""
    proxy = NginxProxy(LocalTransport(), nginx_instance.spec(**spec), "127.0.0.1", http)
    for generation, percentage in enumerate((0, 10, 100), start=1):
        table = fleet.table(generation, percentage)
        await proxy.apply(table)
        assert await proxy.verify(table)
