"""A real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright; never a downloaded browser),
with every console message, page error and request it makes recorded for the tests to check."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, Request, async_playwright

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


@dataclass
class Watched:
    """A page and what it did: console errors, uncaught exceptions, every URL it requested."""

    page: Page
    context: BrowserContext
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def foreign(self, base: str) -> list[str]:
        """Requests to anything but canaryd (data: and blob: URLs stay inside the page)."""
        ws = base.replace("http://", "ws://")
        return [
            u
            for u in self.requests
            if not (u.startswith((base + "/", ws + "/")) or u.startswith(("data:", "blob:")))
        ]


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    """One Chromium for the module (a launch costs ~1 s of CPU); each test opens its own context."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(
            f"{CHROMIUM} is missing: apt-get install -y chromium (scripts/setup.sh does)", pytrace=False
        )
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield b
        finally:
            await b.close()


async def open_page(browser: Browser, width: int = 1280, height: int = 900) -> Watched:
    context = await browser.new_context(viewport={"width": width, "height": height})
    page = await context.new_page()
    watched = Watched(page, context)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            watched.errors.append(f"console: {message.text} at {message.location}")

    def on_request(request: Request) -> None:
        watched.requests.append(request.url)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: watched.errors.append(f"page error: {exc}"))
    page.on("request", on_request)
    page.on("websocket", lambda ws: watched.requests.append(ws.url))
    return watched
