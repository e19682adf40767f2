"""Browser tests of the web console: Debian's chromium driven by Playwright (Playwright's own
browser download cannot run here). Where chromium is missing the tests skip, unless
TRELLIS_REQUIRE_CHROMIUM=1 (CI sets it) turns the skip into a failure.

`console_page` (the fixture, in conftest.py) is a fresh page at the gateway's console; on a
failing test it saves `failure.png` under the test's temp folder and names it in the report.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

CHROMIUM_ENV = "TRELLIS_CHROMIUM"  # a chromium binary other than Debian's
REQUIRE_ENV = "TRELLIS_REQUIRE_CHROMIUM"
# The flags a closed network needs: no background connections, updates or sync.
CHROMIUM_ARGS = (
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
)
TIMEOUT_MS = 20_000  # a wait in the page: long enough for a loaded shared machine


def chromium_path() -> str:
    found = os.environ.get(CHROMIUM_ENV) or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        reason = "Debian's chromium is not installed (apt-get install chromium)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason}, and {REQUIRE_ENV}=1 requires the browser tests to run")
        pytest.skip(reason)
    return found


@asynccontextmanager
async def browser_page(base_url: str, shots: Path, failed: list[bool]) -> AsyncIterator[object]:
    """A Playwright page of a fresh browser context at `base_url`; a screenshot on failure."""
    from playwright.async_api import async_playwright

    executable = chromium_path()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS))
        try:
            context = await browser.new_context(base_url=base_url, viewport={"width": 1400, "height": 900})
            context.set_default_timeout(TIMEOUT_MS)
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            try:
                yield page
            finally:
                if failed and failed[0]:
                    path = shots / "failure.png"
                    try:
                        await page.screenshot(path=str(path), full_page=True)
                        print(f"console screenshot: {path}; page errors: {errors}")
                    except Exception as exc:  # the page may be what broke
                        print(f"console screenshot failed: {exc!r}; page errors: {errors}")
        finally:
            await browser.close()


async def sign_in(page: object, token: str) -> None:
    """Open the console and sign in with `token` through its form."""
    from playwright.async_api import Page, expect

    assert isinstance(page, Page)
    await page.goto("/console/")
    await page.get_by_label("API token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#who")).to_contain_text("·")


SERIOUS = ("serious", "critical")


async def assert_accessible(page: object, what: str) -> None:
    """axe-core (bundled by axe-playwright-python) finds no serious or critical violation on the
    page as it is now; the failure names each rule and the elements it found."""
    from axe_playwright_python.async_playwright import Axe

    results = await Axe().run(page)
    serious = [v for v in results.response["violations"] if v.get("impact") in SERIOUS]
    found = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:5]}" for v in serious
    ]
    assert not found, f"accessibility of {what}:\n" + "\n".join(found)
