"""The page with JSON events, in a real headless Chromium against a real server: the log, the events
table (the latest data per topic and event name, written with textContent) and the chart (numeric
fields plotted as ``topic/event.field``)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from echo.publishing import broadcast
from tests.helpers.browser import (
    ms,
)
from tests.helpers.processes import Server

pytestmark = pytest.mark.browser


def publish(topic: str, data: Any, event: str) -> None:
    """``publish()`` from a thread of its own: Playwright's sync API runs an event loop in this one."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(broadcast.publish, topic, data, event=event).result()


def test_json_events_show_in_the_log_the_events_table_and_the_chart(
    server: Server, page: Any, topic: str
) -> None:
    from playwright.sync_api import expect

    note = {"text": "héllo <b>bold</b>", "n": [1, 2]}
    publish(topic, note, event="note")
    publish(topic, {"total": 12.5, "state": "paid"}, event="order")
    publish(topic, {"total": 20, "state": "shipped"}, event="order")

    page.goto(server.http_url("/"))
    expect(page.locator("#events-box")).to_be_hidden()  # nothing to show yet
    page.click("#connect")
    expect(page.locator("#status")).to_have_text("open", timeout=ms(20))
    page.check(f'#topic-list input[value="{topic}"]')  # listed by /api/topics: it has history

    # The table: one row per event name, the most recently updated first, its latest data as text.
    rows = page.locator("#events tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0).locator("td")).to_have_text([topic, "order", '{"total":20,"state":"shipped"}', "#3"])
    expect(rows.nth(1).locator("td")).to_have_text(
        [topic, "note", json.dumps(note, separators=(",", ":"), ensure_ascii=False), "#1"]
    )
    assert page.locator("#events b").count() == 0  # server text is text, never markup
    expect(page.locator("#log")).to_contain_text(
        f'replayed {topic} #1 note: {{"text":"héllo <b>bold</b>","n":[1,2]}}'
    )

    # The chart: numeric fields of data, as series topic/event.field; text and lists are not plotted.
    page.wait_for_function(f"() => window.liveChart.latest()['{topic}/order.total'] === 20")
    assert {s for s in page.evaluate("window.liveChart.series()") if s.startswith(topic)} == {
        f"{topic}/order.total"
    }

    # A live event whose data is a number is plotted as series topic/event.
    publish(topic, 21.5, event="temperature")
    page.wait_for_function(f"() => window.liveChart.latest()['{topic}/temperature'] === 21.5")
    expect(page.locator("#log")).to_contain_text(f"data {topic} #4 temperature: 21.5")
    expect(rows.nth(0).locator("td")).to_have_text([topic, "temperature", "21.5", "#4"])
    assert page.evaluate("window.liveChart.events()")[f"{topic} order"] == '{"total":20,"state":"shipped"}'
    page.console.assert_clean()
