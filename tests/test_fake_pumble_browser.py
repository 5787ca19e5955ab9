"""The fake Pumble's page in headless Chromium: times in the viewer's zone, links that open."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import httpx

from tests.conftest import TEST_KEY
from tests.test_admin_browser import CHROMIUM, browser, pytestmark, sync_api  # noqa: F401


def test_times_show_in_the_viewers_zone_and_links_are_links(fake_pumble, browser):  # noqa: F811
    httpx.post(f"{fake_pumble.url}/sendMessage", headers={"ApiKey": TEST_KEY},
               json={"channel": "orders", "text": "see https://shop.example/o/1",
                     "asBot": True}).raise_for_status()
    [sent] = fake_pumble.messages("orders")
    stamp = datetime.fromisoformat(sent["timestamp"])
    context = browser.new_context(timezone_id="Asia/Kathmandu", locale="en-GB")  # UTC+5:45
    page = context.new_page()
    page.goto(f"{fake_pumble.url}/_fake/")
    shown = page.locator("time.when").inner_text()
    local = stamp.astimezone(ZoneInfo("Asia/Kathmandu"))
    assert local.strftime("%H:%M") in shown and "UTC" not in shown, shown
    link = page.locator(".text a")
    sync_api.expect(link).to_have_attribute("href", "https://shop.example/o/1")
    context.close()
