"""The operator's console and the API docs in a real headless Chromium, against a running canaryd with a real
nginx and five real sample-app instances."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from pathlib import Path

from playwright.async_api import Browser, Page, expect

from tests.fixtures.stack import APPCTL, TOKEN, LoadGenerator, Stack
from tests.ui.conftest import Watched, open_page

#: `CANARYD_SCREENSHOTS=1` writes the README's screenshots; otherwise they go to the test's tmp_path, so a
#: test run leaves the work tree as it was.
DOC_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
#: Short stages that move on time (an inconclusive stage does not wait), so the page has something to show.
LIVE = {
    "stages": [10, 25, 50, 75],
    "stage_duration": 4,
    "health_check_interval": 1,
    "inconclusive_timeout": 0,
    "min_requests": 10,
}
#: Stages long enough that nothing moves unless an operator acts.
STILL = {"stages": [10, 50, 100], "stage_duration": 600, "health_check_interval": 5}


async def sign_in(w: Watched, base: str, token: str, path: str = "/ui") -> Page:
    page = w.page
    await page.goto(base + path)
    await page.fill("#token-input", token)
    await page.click("#token-form button[type=submit]")
    await expect(page.locator("#whoami-text")).to_be_visible()
    return page


async def points(page: Page) -> int:
    return int(await page.get_attribute("#split-chart", "data-points") or 0)


async def test_live_canary_then_rollback_from_the_page(
    embedded_stack: Stack, browser: Browser, tmp_path: Path
) -> None:
    """The dashboard follows a canary live (stage and split chart move without a reload), then the Roll back
    button rolls it back and the page shows rolled back with the reason; no console error, no foreign host."""
    s = embedded_stack
    images = DOC_IMAGES if os.environ.get("CANARYD_SCREENSHOTS") == "1" else tmp_path
    await s.register("v1")
    load = LoadGenerator(s.proxy_url, rate=40).start()
    try:
        r = await s.deploy("v2", LIVE)
        assert r.status_code == 201, r.text
        dep_id = r.json()["id"]
        w = await open_page(browser)
        page = await sign_in(w, s.base, TOKEN)
        await expect(page.locator("#deployments")).to_contain_text(f"#{dep_id}")
        await page.select_option("#status-filter", "rolled_back")
        await expect(page.locator("#deployments")).not_to_contain_text(f"#{dep_id}")
        await page.select_option("#status-filter", "active")
        await page.click(f"a[href='#/deployments/{dep_id}']")
        summary = page.locator("#dep-summary")
        await expect(summary).to_contain_text(re.compile(r"Stage [12] of 4"), timeout=30_000)
        navigations: list[str] = []
        page.on("framenavigated", lambda frame: navigations.append(frame.url))
        before = await points(page)
        await expect(summary).to_contain_text("Stage 2 of 4", timeout=30_000)
        await expect(page.locator(".timeline .current")).to_contain_text("stage 2: current")
        await expect(page.locator("#verdicts")).to_be_visible(timeout=15_000)
        deadline = time.monotonic() + 15
        while await points(page) <= before and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert await points(page) > before, "the split chart did not grow"
        assert not [u for u in navigations if "/ui" in u and "#" not in u], (
            f"the page reloaded: {navigations}"
        )
        images.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(images / "console-canary.png"), full_page=True)

        await page.fill("#action-reason", "checkout latency seen by support")
        rollback = page.locator("button[data-action=rollback]")
        await expect(rollback).to_be_enabled()
        await rollback.focus()
        await page.keyboard.press("Enter")  # keyboard-usable
        await expect(page.locator(".dep-head .badge")).to_have_text("rolled back", timeout=60_000)
        await expect(page.locator("#dep-reasons")).to_contain_text("checkout latency seen by support")
        await expect(page.locator("#dep-summary")).to_contain_text("Finished: rolled back after stage")
        await expect(page.locator(".timeline .stopped")).to_have_count(1)
        await expect(page.locator("#history")).to_contain_text("rollback_started")
        await expect(page.locator("#history")).to_contain_text("token:bootstrap")
        await page.screenshot(path=str(images / "console-rolled-back.png"), full_page=True)
    finally:
        await load.stop()
    status = await s.status(dep_id)
    assert status["canary_status"] == "rolled_back"
    assert any("checkout latency seen by support" in reason for reason in status["reasons"])
    assert await s.fleet_versions() == ["v1"] * 5
    assert w.errors == []
    assert w.foreign(s.base) == []
    assert any("/ws?" in u for u in w.requests), "the page did not use the WebSocket"


async def test_read_token_sees_no_enabled_action(embedded_stack: Stack, browser: Browser) -> None:
    """A read token gets a read-only view (every action disabled, said in words), also at phone width."""
    s = embedded_stack
    await s.register("v1")
    r = await s.deploy("v2", STILL)
    assert r.status_code == 201, r.text
    dep_id = r.json()["id"]
    await s.wait(dep_id, until={"monitoring"}, timeout=30)
    r = await s.api.post("/tokens", json={"name": "viewer", "scope": "read"})
    read_token = r.json()["token"]
    for width in (1280, 390):
        w = await open_page(browser, width=width, height=800)
        page = await sign_in(w, s.base, read_token, f"/ui#/deployments/{dep_id}")
        await expect(page.locator("#whoami-text")).to_contain_text("read-only view")
        await expect(page.locator("#dep-summary")).to_contain_text("Stage 1 of 3")
        buttons = page.locator("button[data-action]")
        assert await buttons.count() == 5
        for i in range(5):
            await expect(buttons.nth(i)).to_be_disabled()
        await expect(page.locator(".actions")).to_contain_text("Read-only view")
        overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"the page is wider than a {width} px window by {overflow} px"
        assert w.errors == []
        assert w.foreign(s.base) == []
        await w.context.close()
    # The token survives a reload (sessionStorage) but not a new browser session.
    w = await open_page(browser)
    await sign_in(w, s.base, read_token)
    await w.page.reload()
    await expect(w.page.locator("#whoami-text")).to_contain_text("viewer")
    fresh = await w.context.new_page()
    await fresh.goto(s.base + "/ui")
    await expect(fresh.locator("#token-form")).to_be_visible()
    await w.context.close()
    assert (await s.status(dep_id))["canary_status"] == "monitoring"


async def test_docs_authorize_then_promote(embedded_stack: Stack, browser: Browser) -> None:
    """On /docs (served offline from the package): Authorize with a token, then Try it out on promote answers
    202 and the deployment moves; /redoc renders too. No request leaves canaryd."""
    s = embedded_stack
    await s.register("v1")
    r = await s.deploy("v2", STILL)
    assert r.status_code == 201, r.text
    dep_id = r.json()["id"]
    await s.wait(dep_id, until={"monitoring"}, timeout=30)

    w = await open_page(browser)
    page = w.page
    await page.goto(s.base + "/docs")
    await page.click("button.authorize")
    await page.fill(".modal-ux input", TOKEN)
    await page.click(".modal-ux button.authorize")
    await page.click(".modal-ux button.btn-done")
    op = page.locator("#operations-actions-promote_api_v1_deployments__deployment_id__promote_post")
    await op.locator(".opblock-summary").click()
    await op.locator("button.try-out__btn").click()
    await op.locator("input[placeholder='deployment_id']").fill(str(dep_id))
    await op.locator("button.execute").click()
    await expect(op.locator(".live-responses-table tbody .response-col_status").first).to_have_text(
        "202", timeout=15_000
    )
    await s.wait(dep_id, until={"promoting", "completed"}, timeout=30)
    events = await s.events(dep_id)
    assert any(e["kind"] == "promoted" and e["actor"] == "token:bootstrap" for e in events)

    await page.goto(s.base + "/redoc")
    await expect(page.locator("h2", has_text="Promote the canary")).to_be_visible(timeout=15_000)
    assert w.errors == []
    assert w.foreign(s.base) == []


async def test_an_ab_test_is_shown_as_one(embedded_stack: Stack, browser: Browser) -> None:
    """During an A/B test the split is not a percentage: the page and the list say that the canary gets the
    requests that match its rules."""
    s = embedded_stack
    await s.register("v1")
    config = {
        "stage_duration": 600,
        "health_check_interval": 5,
        "ab": {"match": [{"header": "X-Beta", "equals": "1"}]},
    }
    r = await s.deploy("v2", config, strategy="ab")
    assert r.status_code == 201, r.text
    dep_id = r.json()["id"]
    await s.wait(dep_id, until={"monitoring"}, timeout=30)
    w = await open_page(browser)
    page = await sign_in(w, s.base, TOKEN, f"/ui#/deployments/{dep_id}")
    await expect(page.locator("#dep-summary")).to_contain_text("A/B test: the canary gets only the requests")
    await page.get_by_role("link", name="← all deployments").click()
    row = page.locator("tr", has=page.locator(f'a[href="#/deployments/{dep_id}"]'))
    await expect(row).to_contain_text("A/B")
    assert w.errors == []
    await w.context.close()


async def test_a_mirror_test_is_shown_as_one(embedded_stack: Stack, browser: Browser) -> None:
    """During a mirror phase the canary answers copies only: the page says so, and its first stage is the
    mirror's percent, not a share of live requests."""
    s = embedded_stack
    await s.register("v1")
    config = {
        "stage_duration": 600,
        "health_check_interval": 5,
        "mirror": {"percent": 20},
        "stages": [50, 100],
    }
    r = await s.deploy("v2", config, strategy="mirror")
    assert r.status_code == 201, r.text
    dep_id = r.json()["id"]
    await s.wait(dep_id, until={"monitoring"}, timeout=30)
    w = await open_page(browser)
    page = await sign_in(w, s.base, TOKEN, f"/ui#/deployments/{dep_id}")
    await expect(page.locator("#dep-summary")).to_contain_text(
        "mirror test: the canary gets a copy of 20 % of requests; clients get stable's answers"
    )
    await expect(page.locator("li.stage").first).to_contain_text("mirror 20 %")
    assert w.errors == []
    await w.context.close()


async def test_a_blue_green_deployment_says_what_the_proxy_does(
    embedded_stack: Stack, browser: Browser
) -> None:
    """While green is tested the page says that green gets only the test requests, and the list names the
    strategy instead of a share."""
    s = embedded_stack
    app = await s.register("v1")
    stop = f"CONTRACT_STATE={s.state_dir} {sys.executable} {APPCTL} stop --host {{host}} --port {{port}}"
    r = await s.api.patch(
        f"/applications/{app['id']}", json={"green_port": app["port"] - 1, "stop_command": stop}
    )
    assert r.status_code == 200, r.text
    r = await s.deploy("v2", {"stage_duration": 600, "health_check_interval": 5}, strategy="blue_green")
    assert r.status_code == 201, r.text
    dep_id = r.json()["id"]
    await s.wait(dep_id, until={"monitoring"}, timeout=30)
    w = await open_page(browser)
    page = await sign_in(w, s.base, TOKEN, f"/ui#/deployments/{dep_id}")
    await expect(page.locator("#dep-summary")).to_contain_text(
        "blue-green: green gets only the test requests"
    )
    await page.get_by_role("link", name="← all deployments").click()
    row = page.locator("tr", has=page.locator(f'a[href="#/deployments/{dep_id}"]'))
    await expect(row).to_contain_text("blue-green")
    assert w.errors == []
    await w.context.close()
    assert (await s.api.post(f"/deployments/{dep_id}/rollback", json={})).status_code == 202
    await s.wait(dep_id, timeout=30)  # the green instances are stopped


async def test_a_rolling_update_shows_its_batches(embedded_stack: Stack, browser: Browser) -> None:
    """A rolling update is shown as batches, not as a canary's share: which batch is judged, which servers
    each batch holds and where it stands, live as an operator starts the next batch."""
    s = embedded_stack
    await s.register("v1")
    config = {"stage_duration": 600, "health_check_interval": 5, "rolling": {"batch_size": 2}}
    r = await s.deploy("v2", config, strategy="rolling")
    assert r.status_code == 201, r.text
    dep_id = r.json()["id"]
    await s.wait(dep_id, until={"monitoring"}, timeout=30)
    first = (await s.status(dep_id))["batches"][0]
    names = ", ".join(x["name"] for x in first["servers"])
    w = await open_page(browser)
    page = await sign_in(w, s.base, TOKEN, f"/ui#/deployments/{dep_id}")
    summary = page.locator("#dep-summary")
    await expect(summary).to_contain_text(
        f"rolling update: batch 1 of 3 ({names}) is judged against the servers not yet upgraded; "
        "0 of 5 servers upgraded and passed"
    )
    await expect(page.locator(".timeline li.stage").first).to_contain_text(f"batch 1: {names}judged")
    await expect(page.locator(".timeline li.stage").nth(2)).to_contain_text("to come")
    await expect(page.locator("#servers")).to_contain_text("batch 1: judged")
    r = await s.api.post(f"/deployments/{dep_id}/promote", json={"to": "next"})
    assert r.status_code == 202, r.text
    await expect(summary).to_contain_text("batch 2 of 3", timeout=30_000)
    await expect(summary).to_contain_text("2 of 5 servers upgraded and passed")
    await expect(page.locator(".timeline li.stage").first).to_contain_text("upgraded")
    assert w.errors == []
    await w.context.close()
    assert (await s.api.post(f"/deployments/{dep_id}/rollback", json={})).status_code == 202
    await s.wait(dep_id, timeout=60)
