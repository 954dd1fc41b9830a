"""The ops dashboard in a real browser: headless Chromium from the distribution's packages,
driven by Playwright with that executable (Playwright's own browser download is never used).

A message is followed live, without reloading the page, from submitted (the broker is held
back) through routed to receipted (the pull recipient acknowledges it), in German and then in
English; the page must never show content. A screenshot is saved (set BRIDGE_OPS_SCREENSHOT to
a path to keep it, as docs/ops-dashboard.png was made).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ops_helpers import JOBCENTER, SPDI, OpsStack, ops_stack

from bridge.demo import demo_referral

pytestmark = pytest.mark.slow

_LIVE = 30_000  # ms a live change may take to show up on a loaded machine


def _install_chromium() -> str | None:
    """The system's Chromium, installed from the distribution's packages if missing (as root)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
    ):
        subprocess.run(command, env=env, check=False, capture_output=True, timeout=900)
    return shutil.which("chromium")


@pytest.fixture(scope="session")
def chromium() -> str:
    path = _install_chromium()
    if path is None:
        message = "no Chromium: install the distribution's `chromium` package (apt-get)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[OpsStack]:
    async for running in ops_stack(tmp_path):
        yield running


async def test_the_dashboard_follows_a_message_live_from_submitted_to_receipted(
    env: OpsStack, chromium: str, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright, expect

    assert env.ops is not None
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox"]
        )
        try:
            page = await browser.new_page(locale="de-DE", viewport={"width": 1280, "height": 1100})
            await page.goto(f"{env.ops.url}/#token={env.stack.ops_token(600)}")
            await expect(page.locator("#live")).to_have_attribute(
                "data-state", "live", timeout=_LIVE
            )
            assert "token" not in page.url  # the fragment was moved into session storage

            await env.stop_broker()  # held back: the message stays submitted
            message_id = await env.submit(JOBCENTER, [SPDI], demo_referral())
            row = page.locator(f'#messages tr[data-message-id="{message_id}"]')
            state = row.locator('[data-field="state"]')
            await expect(state).to_have_attribute("data-state", "submitted", timeout=_LIVE)
            await expect(state).to_have_text("eingereicht")

            await env.start_broker()
            await expect(state).to_have_attribute("data-state", "routed", timeout=_LIVE)
            await env.pull(SPDI, message_id)
            await expect(state).to_have_attribute("data-state", "receipted", timeout=_LIVE)
            await expect(state).to_have_text("quittiert")
            tile = page.locator('#tiles li[data-tile="delivered_today"] .n')
            await expect(tile).not_to_have_text("0", timeout=_LIVE)

            await page.select_option("#lang", "en")
            await expect(state).to_have_text("receipted")
            await expect(page.locator("h1")).to_have_text("Delivery at a glance")
            health = page.locator(f'#health tr[data-agency="{SPDI}"]')
            await expect(health).to_contain_text("up", timeout=_LIVE)
            assert await page.locator("#chart svg polyline").count() >= 1

            text = await page.locator("body").inner_text()
            assert "Beispielmann" not in text  # the demo client's name: never shown

            shot = Path(os.environ.get("BRIDGE_OPS_SCREENSHOT") or tmp_path / "dashboard.png")
            await page.screenshot(path=str(shot), full_page=True)
            png = await asyncio.to_thread(shot.read_bytes)
            assert png[:8] == b"\x89PNG\r\n\x1a\n"
        finally:
            await browser.close()
