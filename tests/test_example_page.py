"""The example page (/example/): the client module alone, in a real Chromium against a real server.

It lists every published frame of the topic named in its URL once, across a server restart, and shows
no template syntax. Waits are on conditions in the page, with timeouts scaled by TEST_TIMEOUT_FACTOR.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from echo.publishing import publish
from tests.helpers.browser import (
    WEBSOCKET_FAILED,
    ms,
    restartable_server,
)
from tests.helpers.processes import Server, timeout

pytestmark = pytest.mark.browser

TEMPLATE_SYNTAX = ("{#", "#}", "{%", "%}", "{{", "}}")
# The seqs the list shows for a topic, in order (a page function: the CSP forbids eval).
SEQS = "(topic) => [...document.querySelectorAll(`#frames li[data-type=data][data-topic='${topic}']`)]"
SEQS += ".map((li) => Number(li.dataset.seq))"


def publish_values(topic: str, numbers: range) -> None:
    """Publish ``{"n": n}`` for each number, from a thread: Playwright's sync API runs an event loop
    here, and publish() is for code without one."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: [publish(topic, {"n": n}) for n in numbers]).result(timeout(30))


def wait_for_seqs(page: Any, topic: str, count: int) -> list[int]:
    page.wait_for_function(f"(topic) => ({SEQS})(topic).length >= {count}", arg=topic, timeout=ms(40))
    return page.evaluate(SEQS, topic)


def test_the_example_page_lists_each_frame_once_across_a_server_restart(
    server_env: dict[str, str], page: Any, topic: str
) -> None:
    from playwright.sync_api import expect

    with restartable_server(server_env) as servers:
        first = servers.server
        assert first is not None
        page.goto(first.http_url(f"/example/?topics={topic}"))
        expect(page.locator("#status")).to_have_text("open")
        expect(page.locator("#topics")).to_have_text(topic)
        text = page.evaluate("document.body.innerText")
        assert not [token for token in TEMPLATE_SYNTAX if token in text], text
        expect(page.locator("#presence")).to_have_text(f"{topic}: 1")  # subscribed: what follows is live

        publish_values(topic, range(3))
        assert wait_for_seqs(page, topic, 3) == [1, 2, 3]
        expect(page.locator("#frames li").first).to_have_text(f'{topic} #1: {{"n":0}}')

        page.console.allowed.append(WEBSOCKET_FAILED)  # Chromium logs each refused retry itself
        servers.stop()
        expect(page.locator("#status")).to_have_text(re.compile(r"^(reconnecting|connecting)"))
        publish_values(
            topic, range(3, 7)
        )  # published while the page has no server: it must get these from history
        servers.start(first.port)
        expect(page.locator("#status")).to_have_text("open", timeout=ms(40))
        assert wait_for_seqs(page, topic, 7) == list(range(1, 8))
        publish_values(topic, range(7, 10))
        assert wait_for_seqs(page, topic, 10) == list(range(1, 11))

        urls = page.evaluate("window.__ws.urls")
        assert urls[0].endswith(f"/ws/echo/?topics={topic}&history=20")
        assert re.search(rf"&since={topic}:3:[0-9a-z]+$", urls[-1]), urls
        assert page.locator("#frames li[data-type=reset]").count() == 0
    page.console.assert_clean()


def test_a_bad_topic_in_the_url_is_shown_not_thrown(server: Server, page: Any) -> None:
    from playwright.sync_api import expect

    page.goto(server.http_url("/example/?topics=Not%20a%20topic"))
    expect(page.locator("#status")).to_have_text(re.compile(r'^closed: invalid topic "Not a topic"'))
    assert page.evaluate("window.__ws.urls") == []
    page.console.assert_clean()
