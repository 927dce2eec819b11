"""The admin's live view (/admin/live/) on a real production server: staff see it update in Chromium while
push_data and the publish API publish; everyone else is refused.

Waits are on conditions in the page (``window.liveView``, the tables' text) with scaled timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from tests.helpers.accounts import Account, Browser, create_accounts, new_account
from tests.helpers.browser import (
    ARTIFACTS,
    ConsoleWatcher,
    ms,
)
from tests.helpers.processes import ROOT, SERVER_COMMANDS, Server, spawn, start_server, stop, timeout
from tests.helpers.publishing import create_key, publish, unique_name

# Set SCREENSHOT_TO_DOCS=1 to refresh the README's picture (docs/admin-live.png) from this run.
DOCS_SCREENSHOT = ROOT / "docs" / "admin-live.png"


@pytest.fixture(scope="module")
def accounts() -> tuple[Account, Account]:
    staff, member = new_account(superuser=True), new_account()
    create_accounts(staff, member)
    return staff, member


@pytest.fixture
def live_env(server_env: dict[str, str]) -> dict[str, str]:
    """A Redis namespace of this test's own: the server processes of earlier tests (which stay in
    the view for a few seconds after they stop) are not in it."""
    return {**server_env, "CHANNEL_LAYER_PREFIX": "wsdemo-test-live-" + uuid.uuid4().hex[:8]}


@pytest.fixture
def live_server(live_env: dict[str, str]) -> Iterator[Server]:
    with start_server(SERVER_COMMANDS["production"], live_env) as running:
        yield running


@pytest.mark.parametrize("who", ["anonymous", "not staff"])
def test_others_are_refused_the_page_and_its_data(
    live_server: Server, accounts: tuple[Account, Account], who: str
) -> None:
    browser = Browser(live_server)
    if who == "not staff":
        assert browser.log_in(accounts[1]).status == 200
    page = browser.request("/admin/live/")
    assert page.path.startswith("/admin/login/"), page.path  # the admin's login, as for any admin page
    assert 'name="next" value="/admin/live/"' in page.body  # and back to the view after logging in
    assert 'id="live"' not in page.body
    data = browser.request("/admin/live/data")
    assert data.status == 403 and data.json()["error"] == "forbidden"


def test_staff_get_the_data(live_server: Server, accounts: tuple[Account, Account]) -> None:
    browser = Browser(live_server)
    assert browser.log_in(accounts[0]).status == 200
    data = browser.request("/admin/live/data")
    assert data.status == 200 and data.headers.get("cache-control") == "no-store"
    body = data.json()
    assert {"time", "topics", "topics_total", "processes", "refused", "dropped", "keys"} <= set(body)
    assert body["processes"], "the server process reports itself"


def log_in(browser: Any, server: Server, account: Account, viewport: dict[str, int]) -> Any:
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    page.set_default_timeout(ms(20))
    # The admin's pages link no favicon, so Chromium asks for /favicon.ico, which nothing serves.
    page.console = ConsoleWatcher(allowed=[re.compile(r"/favicon\.ico$")])
    page.console.attach(page)
    page.goto(server.http_url("/admin/login/"))
    page.fill("input[name=username]", account.username)
    page.fill("input[name=password]", account.password)
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/")
    return page


@contextlib.contextmanager
def watching(server: Server, topic: str) -> Iterator[None]:
    """A WebSocket client watching ``topic`` (a watcher, and a connection of the server) meanwhile."""
    ready, done = threading.Event(), threading.Event()

    async def watch() -> None:
        url = server.ws_url(f"/ws/echo/?topics={topic}&history=0")
        async with websockets.connect(url, origin=server.origin) as ws:
            ready.set()
            while not done.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ws.recv(), 0.2)

    thread = threading.Thread(target=asyncio.run, args=(watch(),), daemon=True)
    thread.start()
    assert ready.wait(timeout(10))
    try:
        yield
    finally:
        done.set()
        thread.join(timeout(10))


def row(page: Any, table: str, first_cell: str) -> Any:
    return page.locator(f"#{table} tbody tr", has=page.locator("td:first-child", has_text=first_cell))


def test_staff_see_the_view_update_while_data_flows(
    live_server: Server, accounts: tuple[Account, Account], browser: Any, live_env: dict[str, str]
) -> None:
    from playwright.sync_api import expect

    topic = "live-" + uuid.uuid4().hex[:8]
    key_name = unique_name()
    key = create_key(name=key_name)
    page = log_in(browser, live_server, accounts[0], {"width": 1100, "height": 1000})
    page.click("#live-link a")  # linked from the admin's index
    page.wait_for_url("**/admin/live/")
    page.wait_for_function("() => window.liveView.updates >= 1")

    pusher = spawn(
        [sys.executable, "manage.py", "push_data", "--topic", topic, "--rate", "20", "--source", "sine"],
        live_env,
    )
    try:
        with watching(live_server, topic):
            topic_row = row(page, "topics", topic)
            expect(topic_row).to_have_count(1, timeout=ms(20))
            first_seq = page.evaluate(
                "(topic) => window.liveView.last.topics.find((t) => t.topic === topic).seq", topic
            )
            # Updated in place while push_data runs: the seq rises, a rate shows, the watcher counts.
            page.wait_for_function(
                """([topic, seq]) => {
                  const t = window.liveView.last.topics.find((t) => t.topic === topic);
                  return t && t.seq >= seq + 20 && t.rate > 0 && t.watchers === 1 && t.epoch;
                }""",
                arg=[topic, first_seq],
                timeout=ms(30),
            )
            cells = topic_row.locator("td")
            expect(cells.nth(5)).to_have_text("1")  # watchers
            assert float(cells.nth(1).inner_text()) > 0  # rate
            assert int(cells.nth(2).inner_text().replace(",", "")) > first_seq
            # The watcher's connection, on the one server process.
            page.wait_for_function(
                "() => window.liveView.last.processes.reduce((n, p) => n + p.connections, 0) >= 1"
            )
            expect(page.locator("#processes tbody tr")).to_have_count(1)

            # A key that publishes over HTTP: its count and last use.
            expect(row(page, "keys", key_name).locator("td").nth(2)).to_have_text("never")
            for value in (1, 2, 3):
                assert publish(live_server, topic, {"v": value}, key).status == 200
            expect(row(page, "keys", key_name).locator("td").nth(1)).to_have_text("3", timeout=ms(20))
            expect(row(page, "keys", key_name).locator("td").nth(2)).to_contain_text("ago")
            # A refused publish shows among the refusals, by its code.
            assert publish(live_server, "NOT-A-TOPIC", {"v": 1}, key).status == 400
            expect(row(page, "refused", "publish_refused:bad_topic")).to_have_count(1, timeout=ms(20))

            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "admin-live.png"), full_page=True)
            if os.environ.get("SCREENSHOT_TO_DOCS") == "1":
                shutil.copy(ARTIFACTS / "admin-live.png", DOCS_SCREENSHOT)
    finally:
        stop(pusher)
    page.console.assert_clean()
    page.context.close()


def test_the_view_fits_a_phone(live_server: Server, accounts: tuple[Account, Account], browser: Any) -> None:
    page = log_in(browser, live_server, accounts[0], {"width": 390, "height": 844})
    page.goto(live_server.http_url("/admin/live/"))
    page.wait_for_function("() => window.liveView.updates >= 2")
    # No sideways scrolling of the page: wide tables scroll inside their own box.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    assert page.locator("#topics").is_visible()
    page.console.assert_clean()
    page.context.close()
