"""Chromium's own ``EventSource`` on ``/events/``: it resumes through a server restart with no gap and no
duplicate, by its built-in reconnection (``Last-Event-ID``), with no code of the page's.

Every wait is on a condition in the page with a timeout scaled by TEST_TIMEOUT_FACTOR.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.helpers.browser import (
    ms,
    push_data,
    restartable_server,
)

pytestmark = pytest.mark.browser

# Opens an EventSource and records each data event's seq and the lastEventId it came with, and each
# reset; window.__opens counts the times it (re)opened.
LISTEN = """
([url]) => {
  window.__seqs = []; window.__ids = []; window.__resets = []; window.__opens = 0;
  const source = new EventSource(url);
  source.onopen = () => { window.__opens += 1; };
  source.onmessage = (event) => {
    window.__seqs.push(JSON.parse(event.data).seq);
    window.__ids.push(event.lastEventId);
  };
  source.addEventListener("reset", (event) => window.__resets.push(JSON.parse(event.data)));
  window.__source = source;
}
"""


def publish(env: dict[str, str], topic: str, count: int) -> None:
    push_data(env, "--topic", topic, "--count", str(count), "--rate", "50")


def test_event_source_resumes_through_a_server_restart_with_no_gap_and_no_duplicate(
    server_env: dict[str, str], page: Any, topic: str
) -> None:
    with restartable_server(server_env) as servers:
        first = servers.server
        assert first is not None
        # Chromium logs its refused reconnect attempts while the server is down, and /healthz has no icon.
        page.console.allowed.append(re.compile(r"ERR_CONNECTION_REFUSED|/events/|/favicon.ico"))
        page.goto(first.http_url("/healthz"))  # a document of the server's origin: the stream is same-origin
        page.evaluate(LISTEN, [f"/events/?topics={topic}&history=0"])
        page.wait_for_function("() => window.__opens === 1")
        publish(server_env, topic, 5)
        page.wait_for_function("() => window.__seqs.length >= 5")

        servers.stop()
        publish(server_env, topic, 7)  # while the browser has no server: it must get these from history
        servers.start(first.port)
        page.wait_for_function("() => window.__opens >= 2", timeout=ms(40))
        publish(server_env, topic, 10)
        page.wait_for_function("() => window.__seqs.length >= 22", timeout=ms(30))
        seqs = page.evaluate("window.__seqs")
        assert seqs == list(range(1, 23)), seqs
        assert page.evaluate("window.__resets") == []
        ids = page.evaluate("window.__ids")
        assert re.fullmatch(rf"{topic}:22:[0-9a-z]+", ids[-1]), ids[-1]
    page.console.assert_clean()
