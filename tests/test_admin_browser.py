"""The admin page in a real browser: a headless Chromium (Debian's) driven by Playwright.

Skipped, saying why, when /usr/bin/chromium (``apt-get install chromium``) or the ``playwright``
package is missing. Playwright's own browser download is not used: it launches the system one.

``BRIDGE_ADMIN_SCREENSHOT=docs/admin.png pytest tests/test_admin_browser.py`` also writes the
screenshot the README shows (desktop and phone side by side).
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import httpx
import pytest

from bridge.local_server import LocalServer
from tests.conftest import signed_order
from tests.test_admin import (
    ACCOUNT_KEY,
    ORDERS_AND_MISSING,
    SECRETS,
    TOKEN,
    admin_app,
    admin_config,
)
from tests.test_admin_events import ORDERS, three_webhooks

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
PHONE = {"width": 390, "height": 800}
DESKTOP = {"width": 1100, "height": 800}

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="no /usr/bin/chromium (apt-get install chromium)")
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is not installed (pip install playwright)")


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def test_sign_in_see_an_event_retry_a_dead_letter(bridge, fake_pumble, browser, tmp_path):
    b = admin_config(bridge(routes=ORDERS_AND_MISSING,
                            accounts={"other": {"api_key": ACCOUNT_KEY}}))
    with LocalServer(admin_app(b)) as receiver:
        page = browser.new_page(viewport=DESKTOP)
        page.set_default_timeout(15_000)
        seen: list[str] = []  # every page shown, checked for secrets at the end
        page.on("load", lambda loaded: seen.append(loaded.content()))

        # Signing in: a wrong token first, then the right one.
        page.goto(f"{receiver.url}/admin/")
        page.fill("#token", "not-the-token-at-all")
        page.click("button:has-text('Sign in')")
        sync_api.expect(page.locator(".alert")).to_have_text("That token is not right.")
        page.fill("#token", TOKEN)
        page.click("button:has-text('Sign in')")
        sync_api.expect(page.locator("h1")).to_have_text("Recent events")
        assert "No webhook received yet" in page.content()

        # A signed webhook appears on the page, then its deliveries' fates.
        for number in (1001, 1002):
            body, headers = signed_order(number, webhook_id=f"browser-{number}")
            answer = httpx.post(f"{receiver.url}/webhooks/shop", content=body, headers=headers)
            assert answer.status_code == 202
        newest = page.locator("section.event").first  # no reload: the page updates itself
        sync_api.expect(newest).to_contain_text("browser-1002", timeout=15_000)
        sync_api.expect(newest).to_contain_text("queued")
        b.drain()
        page.reload()
        sent = {m["text"]: m["id"] for m in fake_pumble.messages("orders")}
        sync_api.expect(newest).to_contain_text(sent["order 1002"])
        sync_api.expect(newest.locator(".badge.ok")).to_have_text("sent")
        sync_api.expect(newest.locator(".badge.bad")).to_have_text("dead letter")
        sync_api.expect(newest).to_contain_text("Could not find channel")
        desktop_png = page.screenshot(full_page=False)

        # The dead letters: the channel now exists; Retry sends it.
        page.click("nav a:has-text('Dead letters')")
        rows = page.locator("tr.dead-letter")
        sync_api.expect(rows).to_have_count(2)
        phone = browser.new_page(viewport=PHONE, device_scale_factor=1)
        phone.context.add_cookies(page.context.cookies())
        phone.goto(page.url)
        assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        phone_png = phone.screenshot(full_page=False)
        phone.close()

        httpx.post(f"{fake_pumble.url}/_fake/channels",
                   json={"name": "missing"}).raise_for_status()
        row = rows.first
        one = row.get_attribute("id").removeprefix("dl-")
        row.locator("button:has-text('Retry')").click()
        sync_api.expect(page.locator(".notice")).to_have_text("1 dead letter(s) back on the "
                                                              "queue.")
        sync_api.expect(rows).to_have_count(1)
        assert one not in b.dead.ids()
        b.drain()
        retried = fake_pumble.messages("missing")
        assert len(retried) == 1 and retried[0]["text"].endswith("for missing")

        # Retry all, from the page, then every delivery reads "sent".
        page.click("button:has-text('Retry all')")
        sync_api.expect(page.locator(".notice")).to_have_text("1 dead letter(s) back on the "
                                                              "queue.")
        b.drain()
        assert len(fake_pumble.messages("missing")) == 2
        page.click("nav a:has-text('Events')")
        sync_api.expect(page.locator(".badge.bad")).to_have_count(0)
        sync_api.expect(page.locator(".badge.ok")).to_have_count(4)

        page.click("button:has-text('Sign out')")
        sync_api.expect(page.locator("h1")).to_have_text("Sign in")
        page.goto(f"{receiver.url}/admin/routes")
        sync_api.expect(page.locator("#token")).to_be_visible()

    assert len(seen) >= 8, len(seen)
    for html in seen:
        for secret in SECRETS:
            assert secret not in html
    _save_screenshot(browser, desktop_png, phone_png, tmp_path)


def test_search_an_order_see_what_was_posted_replay_it(bridge, fake_pumble, browser):
    b = admin_config(bridge(routes=ORDERS))
    with LocalServer(admin_app(b)) as receiver:
        for body, headers in three_webhooks():
            answer = httpx.post(f"{receiver.url}/webhooks/shop", content=body, headers=headers)
            assert answer.status_code == 202
        b.drain()
        page = browser.new_page(viewport=PHONE)  # the operator is on a phone
        page.set_default_timeout(15_000)
        page.goto(f"{receiver.url}/admin/")
        page.fill("#token", TOKEN)
        page.click("button:has-text('Sign in')")
        sync_api.expect(page.locator("h1")).to_have_text("Recent events")
        refused: list[str] = []  # signed in, nothing fails to load: a CSP refusal would
        page.on("console", lambda message: refused.append(message.text)
                if message.type == "error" else None)

        page.fill("input[name=q]", "42857")
        page.click("button:has-text('Search')")
        found = page.locator("section.event")
        sync_api.expect(found).to_have_count(1)
        sync_api.expect(found).to_contain_text("368.40 EUR")
        sync_api.expect(found).to_contain_text("Alan Turing")
        sync_api.expect(found.locator(".badge.ok")).to_have_text("sent")
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]

        found.locator("a.type").click()
        sync_api.expect(page.locator("h1")).to_contain_text("ev-42857")
        sync_api.expect(page.locator("pre.posted")).to_have_text("order 42857 for Alan Turing")
        sync_api.expect(page.locator("pre.webhook")).to_contain_text('"order_number": 42857')
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]

        page.click("button:has-text('Replay')")
        sync_api.expect(page.locator(".notice")).to_contain_text("Sent again")
        b.drain()
        texts = [m["text"] for m in fake_pumble.messages("orders")]
        assert texts.count("order 42857 for Alan Turing") == 2 and len(texts) == 4
        page.reload()
        sync_api.expect(page.locator("section.event")).to_have_count(2)
        sync_api.expect(page.locator(".badge.replay")).to_have_count(1)
        sync_api.expect(page.locator("pre.posted")).to_have_count(2)
        page.click("a:has-text('← Events')")
        sync_api.expect(page.locator("section.event")).to_have_count(4)  # the replay's too
    assert refused == []


def _save_screenshot(browser, desktop: bytes, phone: bytes, tmp_path: Path) -> None:
    """Desktop and phone side by side in one PNG; to BRIDGE_ADMIN_SCREENSHOT when set."""
    def img(png: bytes, size: dict[str, int]) -> str:
        return (f'<img width="{size["width"]}" height="{size["height"]}" '
                'style="border-radius:10px;box-shadow:0 2px 12px #0004" '
                f'src="data:image/png;base64,{base64.b64encode(png).decode()}">')

    gap = 20
    page = browser.new_page(viewport={"width": DESKTOP["width"] + PHONE["width"] + 3 * gap,
                                      "height": max(DESKTOP["height"], PHONE["height"]) + 2 * gap},
                            device_scale_factor=1)
    page.set_content(
        f"<body style='margin:0;padding:{gap}px;background:#8c97ab;display:flex;gap:{gap}px'>"
        f"{img(desktop, DESKTOP)}{img(phone, PHONE)}</body>")
    out = tmp_path / "admin.png"
    page.screenshot(path=str(out), full_page=False)
    page.close()
    assert out.stat().st_size <= 300_000, out.stat().st_size
    target = os.environ.get("BRIDGE_ADMIN_SCREENSHOT")
    if target:
        shutil.copyfile(out, target)
