"""The page in a real headless Chromium against a real server process: connect, chart, heal, disconnect.

Every wait is on a condition in the page (Playwright's ``wait_for_function`` / ``expect``) with a
timeout scaled by TEST_TIMEOUT_FACTOR; nothing sleeps for a fixed time. The chart's data is read
through the page's documented ``window.liveChart`` hook; frames the page sends are counted by a spy
installed before the page's scripts run (tests/helpers/browser.py).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from tests.helpers.accounts import create_accounts, new_account
from tests.helpers.browser import (
    ARTIFACTS,
    WEBSOCKET_FAILED,
    ms,
    push_data,
    restartable_server,
)
from tests.helpers.processes import ROOT, SERVER_COMMANDS, Server, start_server

pytestmark = pytest.mark.browser

# Page functions, never expressions: polling a string expression would need eval, which the page's
# Content-Security-Policy forbids (as it should).
# How many points the chart holds whose ts is at or after `since` (epoch seconds).
POINTS_SINCE = "([since]) => window.liveChart.data()[0].filter((x) => x >= since).length"
POINTS_SINCE_AT_LEAST = (
    "([since, count]) => window.liveChart.data()[0].filter((x) => x >= since).length >= count"
)


def open_page(page: Any, server: Server) -> None:
    from playwright.sync_api import expect

    page.goto(server.http_url("/"))
    expect(page.locator("#status")).to_have_text("closed")
    page.click("#connect")
    expect(page.locator("#status")).to_have_text("open", timeout=ms(20))


def sent_count(page: Any) -> int:
    return page.evaluate("window.__ws.sent.length")


def test_connect_shows_open_echoes_and_round_trip_time(server: Server, page: Any) -> None:
    from playwright.sync_api import expect

    open_page(page, server)
    expect(page.locator("#log")).to_contain_text("echo: *", timeout=ms(20))
    expect(page.locator("#rtt")).to_have_text(re.compile(r"^\d+(\.\d)?$"), timeout=ms(20))
    expect(page.locator("#rtt-median")).to_have_text(re.compile(r"^\d+(\.\d)?$"))
    urls = page.evaluate("window.__ws.urls")
    assert urls == [f"ws://127.0.0.1:{server.port}/ws/echo/?topics=prices&history=600"]
    assert page.evaluate("window.__ws.sent").count("*") >= 1
    page.console.assert_clean()


def test_pushed_points_fill_the_chart_and_the_legend(
    server: Server, server_env: dict[str, str], page: Any
) -> None:
    from playwright.sync_api import expect

    open_page(page, server)
    started = time.time()
    count = 40
    push_data(server_env, "--topic", "prices", "--count", str(count), "--rate", "40")
    page.wait_for_function(POINTS_SINCE_AT_LEAST, arg=[started, count], timeout=ms(30))
    assert page.evaluate(POINTS_SINCE, [started]) == count
    assert page.evaluate("window.liveChart.series()") == ["prices/price"]
    latest = page.evaluate("window.liveChart.latest()['prices/price']")
    expect(page.locator('#latest [data-key="prices/price"] dd')).to_have_text(f"{latest:.2f}")
    expect(page.locator("#age")).to_have_text(re.compile(r"\d+(\.\d)? (ms|s|min)$"))
    # The chart was drawn, by uPlot, into #chart.
    assert page.locator("#chart canvas").count() == 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page-with-chart.png"), full_page=True)
    page.console.assert_clean()


def test_a_fast_feed_is_drawn_once_per_animation_frame_not_once_per_message(
    server: Server, server_env: dict[str, str], page: Any
) -> None:
    open_page(page, server)
    started = time.time()
    draws_before = page.evaluate("window.liveChart.draws()")
    count = 400
    push_data(server_env, "--topic", "prices", "--count", str(count), "--rate", "200")
    page.wait_for_function(POINTS_SINCE_AT_LEAST, arg=[started, count], timeout=ms(30))
    assert page.evaluate(POINTS_SINCE, [started]) == count
    draws = page.evaluate("window.liveChart.draws()") - draws_before
    assert 0 < draws < count / 2
    page.console.assert_clean()


def test_the_page_reconnects_by_itself_after_a_server_restart(server_env: dict[str, str], page: Any) -> None:
    from playwright.sync_api import expect

    with restartable_server(server_env) as servers:
        first = servers.server
        assert first is not None
        open_page(page, first)
        push_data(server_env, "--topic", "prices", "--count", "5", "--rate", "50")
        page.wait_for_function("() => window.liveChart.count('prices') >= 5", timeout=ms(30))
        before = page.evaluate("window.liveChart.count('prices')")

        # Chromium logs each refused reconnect attempt itself while the server is down.
        page.console.allowed.append(WEBSOCKET_FAILED)
        servers.stop()
        expect(page.locator("#status")).to_have_text(re.compile(r"^reconnecting in \d+ s$"), timeout=ms(20))
        # Published while the page has no server: it must get these from history when it is back.
        push_data(server_env, "--topic", "prices", "--count", "7", "--rate", "50")
        servers.start(first.port)
        expect(page.locator("#status")).to_have_text("open", timeout=ms(40))

        started = time.time()
        push_data(server_env, "--topic", "prices", "--count", "10", "--rate", "50")
        page.wait_for_function(POINTS_SINCE_AT_LEAST, arg=[started, 10], timeout=ms(30))
        # No hole and no duplicate: exactly the 7 missed and the 10 new points were added.
        page.wait_for_function(f"() => window.liveChart.count('prices') >= {before + 17}", timeout=ms(30))
        assert page.evaluate("window.liveChart.count('prices')") == before + 17
        urls = page.evaluate("window.__ws.urls")
        assert len(urls) >= 2
        assert re.search(r"[?&]since=prices:\d+:[0-9a-z]+(&|,|$)", urls[-1]), urls[-1]
    page.console.assert_clean()


def test_disconnect_closes_and_sends_nothing_more(server: Server, page: Any) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
    from playwright.sync_api import expect

    open_page(page, server)
    page.wait_for_function("() => window.__ws.sent.length >= 1", timeout=ms(20))
    page.click("#disconnect")
    expect(page.locator("#status")).to_have_text("closed")
    expect(page.locator("#connect")).to_be_enabled()
    sent, sockets = sent_count(page), page.evaluate("window.__ws.urls.length")
    # Nothing may happen: wait for a frame or a new socket, and expect the wait to time out.
    with pytest.raises(PlaywrightTimeoutError):
        page.wait_for_function(
            "([sent, sockets]) => window.__ws.sent.length > sent || window.__ws.urls.length > sockets",
            arg=[sent, sockets],
            timeout=ms(4),
        )
    expect(page.locator("#status")).to_have_text("closed")
    page.console.assert_clean()


# ------------------------------------------------------------ the protocol, against a scripted socket
# Playwright stands in for the server's WebSocket (the page and its static files still come from the
# real server), so each test can send exactly the frames, or the silence, that it is about. Playwright
# swaps the page's WebSocket class for its own here, so the spy sees nothing: count with the hook.


def data_frame(
    seq: int, price: float, ts: float, epoch: str = "e1", topic: str = "prices", **extra: Any
) -> str:
    return json.dumps(
        {
            "type": "data",
            "topic": topic,
            "epoch": epoch,
            "seq": seq,
            "ts": ts,
            "values": {"price": price},
            **extra,
        }
    )


def reset_frame(epoch: str | None, reason: str = "a new stream") -> str:
    return json.dumps({"type": "reset", "topic": "prices", "epoch": epoch, "reason": reason})


def echo_stars(ws: Any) -> None:
    ws.on_message(lambda message: ws.send(message) if message == "*" else None)


def wait_for_hook(page: Any, call: str, expected: Any) -> None:
    """Wait until ``window.liveChart[call]()`` equals ``expected`` (compared as JSON)."""
    page.wait_for_function(
        "([call, expected]) => JSON.stringify(window.liveChart[call]()) === expected",
        arg=[call, json.dumps(expected, separators=(",", ":"))],
        timeout=ms(20),
    )


# Every text #status and #error show, in order, from the moment it is installed: a state that lasts
# half a second (reconnecting, before the backoff's first retry) is seen however fast the page moves.
RECORD_STATUS = """() => {
  const status = document.getElementById("status");
  const error = document.getElementById("error");
  window.__statuses = [];
  const record = () => window.__statuses.push([status.textContent, error.hidden ? "" : error.textContent]);
  const observer = new MutationObserver(record);
  const what = { childList: true, characterData: true, subtree: true, attributes: true };
  for (const node of [status, error]) observer.observe(node, what);
}"""


def test_batched_replayed_duplicate_and_reset_frames(server: Server, page: Any) -> None:
    from playwright.sync_api import expect

    now = time.time()

    def scripted(ws: Any) -> None:
        echo_stars(ws)
        # History on connect, several frames to a text frame; then a duplicate; then live.
        ws.send("\n".join(data_frame(seq, 100 + seq, now - 10 + seq, replay=True) for seq in (1, 2, 3)))
        ws.send(data_frame(3, 103, now - 7, replay=True))
        ws.send(
            data_frame(4, 104, now - 6)
            + "\n"
            + json.dumps({"type": "presence", "topic": "prices", "count": 3})
        )

    page.route_web_socket(re.compile(r"/ws/echo/"), scripted)
    open_page(page, server)
    page.wait_for_function("() => window.liveChart.count('prices') >= 4")
    expect(page.locator("#presence")).to_have_text("prices: 3 watching")
    expect(page.locator('#latest [data-key="prices/price"] dd')).to_have_text("104")
    assert page.evaluate("window.liveChart.count('prices')") == 4
    assert page.evaluate("window.liveChart.lastSeq()") == {"prices": 4}
    assert page.evaluate("window.liveChart.epochs()") == {"prices": "e1"}
    page.console.assert_clean()


def test_a_reset_starts_the_topic_afresh_in_the_new_epoch(server: Server, page: Any) -> None:
    now = time.time()
    sockets: list[Any] = []

    def scripted(ws: Any) -> None:
        sockets.append(ws)
        echo_stars(ws)
        ws.send("\n".join(data_frame(seq, 100 + seq, now - 20 + seq, "e1") for seq in range(1, 6)))

    page.route_web_socket(re.compile(r"/ws/echo/"), scripted)
    open_page(page, server)
    wait_for_hook(page, "lastSeq", {"prices": 5})
    assert page.evaluate("window.liveChart.count('prices')") == 5
    assert page.evaluate("window.liveChart.epochs()") == {"prices": "e1"}

    # Redis lost the stream: a new epoch counts from 1 again, below the 5 the page has seen.
    new_ts = [now - 3, now - 2, now - 1]
    sockets[0].send(reset_frame("e2", "redis lost the counter"))
    sockets[0].send("\n".join(data_frame(seq, 200 + seq, new_ts[seq - 1], "e2") for seq in (1, 2, 3)))
    sockets[0].send(data_frame(2, 999, now - 0.5, "e2"))  # a duplicate within the new epoch: dropped
    sockets[0].send(data_frame(4, 204, now, "e2"))
    wait_for_hook(page, "lastSeq", {"prices": 4})
    assert page.evaluate("window.liveChart.epochs()") == {"prices": "e2"}
    assert page.evaluate("window.liveChart.count('prices')") == 4
    xs, prices = page.evaluate("window.liveChart.data()")
    assert xs == [*new_ts, now]  # nothing of epoch e1 is left, and the duplicate was not drawn
    assert prices == [201, 202, 203, 204]
    assert page.evaluate("window.liveChart.latest()") == {"prices/price": 204}
    page.console.assert_clean()


def test_a_data_frame_of_an_unannounced_epoch_counts_as_a_reset(server: Server, page: Any) -> None:
    from playwright.sync_api import expect

    now = time.time()
    sockets: list[Any] = []

    def scripted(ws: Any) -> None:
        sockets.append(ws)
        echo_stars(ws)
        ws.send("\n".join(data_frame(seq, 100 + seq, now - 20 + seq, "e1") for seq in range(1, 6)))

    page.route_web_socket(re.compile(r"/ws/echo/"), scripted)
    open_page(page, server)
    wait_for_hook(page, "lastSeq", {"prices": 5})
    # No reset announces epoch e2: the page must not take seq 1 and 2 for duplicates of e1's.
    sockets[0].send(data_frame(1, 301, now - 2, "e2") + "\n" + data_frame(2, 302, now - 1, "e2"))
    wait_for_hook(page, "epochs", {"prices": "e2"})
    wait_for_hook(page, "lastSeq", {"prices": 2})
    assert page.evaluate("window.liveChart.data()") == [[now - 2, now - 1], [301, 302]]
    # The log line is written as the frame is handled; wait for it rather than read it once.
    expect(page.locator("#log")).to_contain_text("without a reset", timeout=ms(10))
    page.console.assert_clean()


def test_a_reconnect_resumes_from_the_epoch_and_seq_it_has(server: Server, page: Any) -> None:
    from playwright.sync_api import expect

    now = time.time()
    sockets: list[Any] = []

    def scripted(ws: Any) -> None:
        sockets.append(ws)
        echo_stars(ws)

    def drop_and_wait_for_socket(count: int) -> str:
        sockets[-1].close(code=1001, reason="going away")
        page.wait_for_function("(n) => window.liveChart.connections() === n", arg=count, timeout=ms(20))
        expect(page.locator("#status")).to_have_text("open", timeout=ms(20))
        return sockets[-1].url

    page.route_web_socket(re.compile(r"/ws/echo/"), scripted)
    open_page(page, server)
    assert "since" not in sockets[0].url
    sockets[0].send("\n".join(data_frame(seq, 100, now - 10 + seq, "e1") for seq in (1, 2, 3)))
    wait_for_hook(page, "lastSeq", {"prices": 3})
    assert drop_and_wait_for_socket(2).endswith("/ws/echo/?topics=prices&history=600&since=prices:3:e1")

    # A reset names the new epoch but no frame of it came yet: nothing to resume from.
    sockets[-1].send(reset_frame("e2"))
    wait_for_hook(page, "epochs", {"prices": "e2"})
    assert page.evaluate("window.liveChart.lastSeq()") == {}
    assert drop_and_wait_for_socket(3).endswith("/ws/echo/?topics=prices&history=600")

    sockets[-1].send("\n".join(data_frame(seq, 100, now - 5 + seq, "e2", replay=True) for seq in (1, 2)))
    wait_for_hook(page, "lastSeq", {"prices": 2})
    assert drop_and_wait_for_socket(4).endswith("/ws/echo/?topics=prices&history=600&since=prices:2:e2")

    # A reset with no stream at all (epoch null): the first frame after it starts one, no surprise.
    sockets[-1].send(reset_frame(None, "no stream"))
    wait_for_hook(page, "epochs", {"prices": None})
    sockets[-1].send(data_frame(1, 100, now, "e3"))
    wait_for_hook(page, "epochs", {"prices": "e3"})
    assert page.evaluate("window.liveChart.count('prices')") == 1
    assert "without a reset" not in page.locator("#log").text_content()
    page.console.assert_clean()


# The cells of each series as text: "null" where the line breaks, "-" (undefined) where it goes on.
CELLS = """() => window.liveChart.data().map((column, i) =>
  i === 0 ? column : column.map((v) => (v === null ? "null" : v === undefined ? "-" : v)))"""


def test_a_gap_in_time_breaks_the_line_and_regular_spacing_does_not(server: Server, page: Any) -> None:
    t0 = float(int(time.time()) - 100)  # whole seconds: every ts below is exact in binary
    prices = [0, 1, 2, 3, 4, 20, 21, 40]  # a second apart, then a gap of 16 s, then one of 19 s
    sine = [0.5 + i for i in range(21)]  # a second apart throughout: 0.5 ... 20.5
    frames: list[tuple[float, str, int]] = [(t, "prices", seq) for seq, t in enumerate(prices, 1)]
    frames += [(t, "sine", seq) for seq, t in enumerate(sine, 1)]
    text = "\n".join(
        data_frame(seq, seq, t0 + t, topic=topic, replay=True) for t, topic, seq in sorted(frames)
    )

    def scripted(ws: Any) -> None:
        echo_stars(ws)
        ws.send(text)

    page.route_web_socket(re.compile(r"/ws/echo/"), scripted)
    open_page(page, server)
    page.wait_for_function("() => window.liveChart.count() === 29", timeout=ms(20))
    assert page.evaluate("window.liveChart.series()") == ["prices/price", "sine/price"]
    xs, price_cells, sine_cells = page.evaluate(CELLS)
    rows = [(x - t0, p, s) for x, p, s in zip(xs, price_cells, sine_cells, strict=True)]
    # One row more than points: the gap from 21 to 40 has no other topic's row inside, so it gets one.
    assert len(rows) == 30
    assert page.evaluate("window.liveChart.count('prices')") == 8
    assert (21, "null", "-") in rows
    for t, price, wave in rows:
        assert wave != "null", rows  # sine came every second: its line never breaks
        if t in prices and price != "null":
            assert price == prices.index(t) + 1
        elif 4 < t < 20:  # sine's rows inside prices' gap: the price line breaks across them
            assert price == "null", (t, rows)
        elif t != 21:  # sine's rows between prices' regular points: the price line goes on
            assert price == "-", (t, rows)
    assert [t for t, price, _ in rows if price == "null"] == [*sine[4:20], 21]  # 4.5 ... 19.5, and 21
    page.console.assert_clean()


def test_a_silent_connection_is_detected_and_replaced(server: Server, page: Any) -> None:
    sockets: list[Any] = []

    def silent(ws: Any) -> None:
        sockets.append(ws)  # accepted, and then never a word

    page.route_web_socket(re.compile(r"/ws/echo/"), silent)
    open_page(page, server)
    page.wait_for_function("() => window.liveChart.connections() >= 2", timeout=ms(30))
    assert len(sockets) >= 2
    assert "no frame for" in page.locator("#log").text_content()
    page.console.assert_clean()


def test_a_refused_request_is_shown_and_not_retried(server: Server, page: Any) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
    from playwright.sync_api import expect

    def refuse(ws: Any) -> None:
        ws.send(json.dumps({"type": "error", "code": "bad_topic", "detail": "no such topic: <b>x</b>"}))
        ws.close(code=1008, reason="bad request")

    page.route_web_socket(re.compile(r"/ws/echo/"), refuse)
    page.goto(server.http_url("/"))
    page.click("#connect")
    expect(page.locator("#status")).to_have_text("closed", timeout=ms(20))
    expect(page.locator("#error")).to_have_text(re.compile(r"bad request|bad_topic"))
    assert page.locator("#error b").count() == 0  # server text is text, never markup
    with pytest.raises(PlaywrightTimeoutError):
        page.wait_for_function("() => window.liveChart.connections() > 1", timeout=ms(3))
    assert page.evaluate("window.liveChart.connections()") == 1
    page.console.assert_clean()


def test_after_1013_the_page_reconnects_asking_for_what_it_missed(server: Server, page: Any) -> None:
    from playwright.sync_api import expect

    now = time.time()
    urls: list[str] = []

    def scripted(ws: Any) -> None:
        urls.append(ws.url)
        echo_stars(ws)
        if len(urls) == 1:  # the first socket falls behind and is dropped by the server
            ws.send("\n".join(data_frame(seq, 100 + seq, now - 5 + seq) for seq in (1, 2, 3)))
            ws.close(code=1013, reason="too slow: messages dropped")
        else:  # the second one gets exactly what it missed
            ws.send(data_frame(4, 104, now))

    page.route_web_socket(re.compile(r"/ws/echo/"), scripted)
    open_page(page, server)
    page.wait_for_function("() => window.liveChart.count('prices') === 4", timeout=ms(20))
    expect(page.locator("#status")).to_have_text("open")
    assert len(urls) == 2
    assert "since" not in urls[0]
    assert urls[1].endswith("&since=prices:3:e1")
    page.console.assert_clean()


def test_try_again_later_refusals_are_retried_with_the_reason_shown(server: Server, page: Any) -> None:
    """1013 with too_many_connections (at connect) or history_unavailable (on a resume) is not final:
    the page shows why, waits for the backoff and asks again, with its `since` if it has one."""
    from playwright.sync_api import expect

    now = time.time()
    urls: list[str] = []

    def scripted(ws: Any) -> None:
        urls.append(ws.url)
        echo_stars(ws)
        refusal = {1: "too_many_connections", 3: "history_unavailable"}.get(len(urls))
        if refusal:
            ws.send(json.dumps({"type": "error", "code": refusal, "detail": "try again later"}))
            ws.close(code=1013, reason="try again later")
        elif len(urls) == 2:  # let in: two frames, then dropped
            ws.send(data_frame(1, 101, now - 2) + "\n" + data_frame(2, 102, now - 1))
            ws.close(code=1001, reason="going away")
        else:
            ws.send(data_frame(3, 103, now))

    page.route_web_socket(re.compile(r"/ws/echo/"), scripted)
    page.goto(server.http_url("/"))
    page.evaluate(RECORD_STATUS)
    page.click("#connect")
    wait_for_hook(page, "lastSeq", {"prices": 3})
    expect(page.locator("#status")).to_have_text("open")
    expect(page.locator("#error")).to_be_hidden()
    assert page.evaluate("window.liveChart.connections()") == 4
    assert ["since" in url for url in urls] == [False, False, True, True]
    assert urls[2].endswith("&since=prices:2:e1") and urls[3].endswith("&since=prices:2:e1")

    statuses = page.evaluate("window.__statuses")
    statuses = statuses[[status for status, _ in statuses].index("connecting") :]  # from the click on
    assert "closed" not in [status for status, _ in statuses], statuses
    waits = [error for status, error in statuses if re.fullmatch(r"reconnecting in \d+ s", status)]
    assert any(error.startswith("too_many_connections") for error in waits), statuses
    assert any(error.startswith("history_unavailable") for error in waits), statuses
    assert page.evaluate("window.liveChart.count('prices')") == 3
    page.console.assert_clean()


def test_the_original_tutorial_page_works_with_only_its_port_changed(server: Server, page: Any) -> None:
    """The tutorial's own page (tests/fixtures, as published), served from another localhost port as a
    reader would, connects to this server's root and shows its `*` echoed back."""
    import functools
    import http.server
    import threading

    original = (ROOT / "tests" / "fixtures" / "tutorial_websock.html").read_text()
    assert "const portnum = 8001;" in original
    html = original.replace("const portnum = 8001;", f"const portnum = {server.port};").encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=functools.partial(httpd.serve_forever, 0.05), daemon=True).start()
    try:
        page.goto(f"http://localhost:{httpd.server_address[1]}/websock.html")
        page.click("input[value=Connect]")
        # After "Connected" come the pushed frames (presence, data) and the echoed heartbeats.
        echoed = "() => (document.myform.text.value.split('Connected\\n')[1] || '').includes('*')"
        page.wait_for_function(echoed, timeout=ms(20))
        assert f"ws://localhost:{server.port}/" in page.evaluate("document.myform.text.value")
    finally:
        httpd.shutdown()


def test_a_logged_in_page_watches_its_private_topic_through_token_expiry_without_a_hole(
    server_env: dict[str, str], page: Any
) -> None:
    """Log in, tick the user's own topic, and keep watching while the connection token (3 s) expires
    again and again: every point published arrives once, none is missing."""
    from playwright.sync_api import expect

    account = new_account()
    create_accounts(account)
    env = {**server_env, "WS_TOKEN_TTL": "3"}
    push_data(env, "--topic", account.topic, "--count", "3", "--rate", "50")  # listed by /api/topics
    with start_server(SERVER_COMMANDS["production"], env) as server:
        page.goto(server.http_url("/accounts/login/"))
        page.fill("input[name=username]", account.username)
        page.fill("input[name=password]", account.password)
        page.click("button[type=submit]")
        expect(page.locator("#username")).to_have_text(account.username)
        page.click("#connect")
        expect(page.locator("#status")).to_have_text("open")
        page.check(f'#topics input[value="{account.topic}"]')
        page.wait_for_function(f"() => window.liveChart.count('{account.topic}') === 3", timeout=ms(20))
        expect(page.locator("#presence")).to_contain_text(f"{account.topic}: 1 watching ({account.username})")

        count = 180  # 9 s at 20/s: the token expires about three times on the way
        push_data(env, "--topic", account.topic, "--count", str(count), "--rate", "20")
        page.wait_for_function(
            f"() => window.liveChart.count('{account.topic}') >= {3 + count}", timeout=ms(30)
        )
        assert page.evaluate(f"window.liveChart.count('{account.topic}')") == 3 + count
        expect(page.locator("#log")).to_contain_text("connection token expired")
        urls = page.evaluate("window.__ws.urls")
        assert len(urls) >= 3, urls  # the first socket, the one with the topic, and renewals
        assert all("token" not in url for url in urls)  # the token travels in a header, not the URL
        assert re.search(rf"since=[^&]*{account.topic}:\d+:[0-9a-z]+", urls[-1]), urls[-1]
    page.console.assert_clean()


def test_a_topic_the_user_may_not_read_is_refused_and_not_retried(server: Server, page: Any) -> None:
    """The real server's refusal (3003) of a topic the page should not have offered (a stale list)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
    from playwright.sync_api import expect

    stale = {"topics": [{"name": "prices", "seq": 1}, {"name": "user-1", "seq": 1}]}
    page.route("**/api/topics", lambda route: route.fulfill(json=stale))
    page.goto(server.http_url("/"))
    expect(page.locator("#login")).to_have_text("Log in")
    page.click("#connect")
    expect(page.locator("#status")).to_have_text("open")
    page.check('#topics input[value="user-1"]')
    expect(page.locator("#error")).to_contain_text("forbidden")
    expect(page.locator("#status")).to_have_text("closed")
    opened = page.evaluate("window.liveChart.connections()")
    with pytest.raises(PlaywrightTimeoutError):
        page.wait_for_function(f"() => window.liveChart.connections() > {opened}", timeout=ms(3))
    page.console.assert_clean()


def test_a_slow_link_rate_gets_the_latest_values_at_that_rate(
    server: Server, server_env: dict[str, str], page: Any
) -> None:
    from playwright.sync_api import expect

    open_page(page, server)
    page.select_option("#max-rate", "2")
    expect(page.locator("#status")).to_have_text("open")
    page.wait_for_function("() => window.__ws.urls.at(-1).includes('max_rate=2')", timeout=ms(20))
    before = page.evaluate("window.liveChart.count('prices')")
    output = push_data(server_env, "--topic", "prices", "--count", "100", "--rate", "50", "-v", "2")
    published = [line for line in output.splitlines() if line.startswith("published ")]
    last_seq = int(published[-1].split()[-1])
    page.wait_for_function(f"() => window.liveChart.lastSeq().prices === {last_seq}", timeout=ms(20))
    added = page.evaluate("window.liveChart.count('prices')") - before
    assert 2 <= added <= 10, added  # about 2 a second over 2 s, not 100
    assert "gap in prices" not in page.locator("#log").inner_text()
    page.console.assert_clean()


# Everything the page shows before it connects, line by line (document.body.innerText), besides the
# topic names the page lists from /api/topics. A template comment or tag rendered as text, or any
# other stray output, is a line that is not here.
NO_VALUE = "\N{EN DASH}"  # what a readout shows before its first value
PAGE_TEXT_ANONYMOUS = [
    "Live data over WebSockets",
    "Log in",
    "Connect",
    "Disconnect",
    "Status: closed",
    "Topics",
    "Window",
    "10 s",
    "30 s",
    "1 min",
    "5 min",
    "10 min",
    "Rate",
    "every frame",
    "10 per second",
    "2 per second",
    "Latest values",
    "Latency",
    "Echo round trip",
    f"{NO_VALUE} ms last, {NO_VALUE} ms median",
    "Newest point",
    f"{NO_VALUE} old",
    "Watching",
    NO_VALUE,
    "Log",
]
TEMPLATE_SYNTAX = ("{#", "#}", "{%", "%}", "{{", "}}")


def test_the_page_shows_its_own_text_and_nothing_else(server: Server, page: Any) -> None:
    """No template syntax (a multi-line ``{# #}`` renders as text) and no line the page does not own."""
    from playwright.sync_api import expect

    page.goto(server.http_url("/"))
    expect(page.locator("#status")).to_have_text("closed")
    expect(page.locator("#topic-list input").first).to_be_attached()  # the list from /api/topics is in
    text = page.evaluate("document.body.innerText")
    assert not [token for token in TEMPLATE_SYNTAX if token in text], text
    topics = set(page.locator("#topic-list").inner_text().split())
    assert topics and all(re.fullmatch(r"[\w.-]+", topic) for topic in topics), topics
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    unexpected = [
        line for line in lines if line not in PAGE_TEXT_ANONYMOUS and not set(line.split()) <= topics
    ]
    assert not unexpected, text
    page.console.assert_clean()
