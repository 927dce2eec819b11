"""Permissions the app decides: ``call:`` rules in WS_TOPIC_ACCESS, asking the app's own models, over
WebSocket and Server-Sent Events.

The app is tests/testapp (an ``Order`` owned by a user); its functions are in tests/testapp/access.py.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.core.exceptions import ImproperlyConfigured

from echo.access.rules import Reader, TopicAccess
from tests.helpers.accounts import Browser, create_accounts, new_account
from tests.helpers.clients import next_echo
from tests.helpers.private_topics import connect, refusal
from tests.helpers.processes import ROOT, SERVER_COMMANDS, Server, start_server, timeout
from tests.testapp.models import Order

RULES = {
    "order-{order_id}": "call:tests.testapp.access.can_read_order",
    "aorder-{order_id}": "call:tests.testapp.access.can_read_order_async",
    "broken-{order_id}": "call:tests.testapp.access.broken",
    "user-{user_id}": "owner",
    "user-*": "nobody",
    "*": "public",
}


@pytest.fixture
async def orders() -> Any:
    owner = await User.objects.acreate(username="owner-" + os.urandom(4).hex())
    other = await User.objects.acreate(username="other-" + os.urandom(4).hex())
    order = await Order.objects.acreate(owner=owner, item="tea")
    return owner, other, order


@pytest.mark.parametrize("prefix", ["order", "aorder"])
async def test_a_call_rule_asks_the_app_with_the_user_and_the_patterns_parts(
    orders: Any, prefix: str
) -> None:
    owner, other, order = orders
    access = TopicAccess(RULES)
    topic = f"{prefix}-{order.pk}"
    assert await access.can_read(Reader(owner), topic)
    assert not await access.can_read(Reader(other), topic)
    assert not await access.can_read(Reader(AnonymousUser()), topic)
    assert not await access.can_read(Reader(owner), f"{prefix}-{order.pk + 1000}")
    assert not access.is_public(topic) and access.decided_by_app(topic)


async def test_a_rule_that_raises_refuses_with_one_log_line(
    orders: Any, caplog: pytest.LogCaptureFixture
) -> None:
    owner, _, order = orders
    caplog.set_level(logging.WARNING, logger="echo.access.rules")
    assert not await TopicAccess(RULES).can_read(Reader(owner), f"broken-{order.pk}")
    lines = [r for r in caplog.records if r.name == "echo.access.rules"]
    assert len(lines) == 1 and "RuntimeError" in lines[0].getMessage() and not lines[0].exc_info


async def test_an_api_key_never_passes_a_call_rule(orders: Any) -> None:
    owner, _, order = orders
    key_reader = Reader(owner, key=object(), key_read=("*",))
    assert not await TopicAccess(RULES).can_read(key_reader, f"order-{order.pk}")


@pytest.mark.parametrize(
    "rule",
    [
        "call:tests.testapp.access.missing",
        "call:no.such.module.fn",
        "call:tests.testapp.access.Order.objects",
    ],
)
def test_a_rule_naming_no_function_is_a_startup_error(rule: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="WS_TOPIC_ACCESS"):
        TopicAccess({"order-{order_id}": rule})


def test_manage_py_check_reports_a_wrong_call_rule_as_echo_E001() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**os.environ, "WS_TOPIC_ACCESS": json.dumps({"order-{order_id}": "call:tests.testapp.nope"})},
        capture_output=True,
        text=True,
        timeout=timeout(60),
        check=False,
    )
    assert result.returncode == 1 and "(echo.E001)" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------- against a real server


def orm(code: str) -> str:
    """Run ``code`` in a process of its own on the session's database (signals and all); the last line
    it printed."""
    script = "from django.contrib.auth.models import User\nfrom tests.testapp.models import Order\n" + code
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=timeout(60), check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""


def event_stream_start(server: Server, topic: str, browser: Browser) -> tuple[int, str, bytes]:
    """GET /events/ for ``topic`` with the browser's cookies: the status, content type and first bytes."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=timeout(10))
    try:
        connection.request(
            "GET", f"/events/?topics={topic}&history=0", headers={"Cookie": browser.cookie_header}
        )
        response = connection.getresponse()
        content_type = (response.getheader("Content-Type") or "").split(";")[0]
        return response.status, content_type, response.read1(4096)
    finally:
        connection.close()


@pytest.fixture
def shop(server_env: dict[str, str]) -> Iterator[Server]:
    with start_server(
        SERVER_COMMANDS["production"], {**server_env, "WS_TOPIC_ACCESS": json.dumps(RULES)}
    ) as server:
        yield server


async def test_the_owner_of_order_1_reads_it_another_user_gets_3003_and_a_handover_closes_it(
    shop: Server,
) -> None:
    owner, other = new_account(), new_account()
    create_accounts(owner, other)
    order_id = await asyncio.to_thread(
        orm, f"print(Order.objects.create(owner_id={owner.id}, item='tea').pk)"
    )
    topic = f"order-{order_id}"
    sessions = {}
    for account in (owner, other):
        sessions[account.username] = Browser(shop)
        sessions[account.username].log_in(account)
    async with connect(shop, f"topics={topic}&history=0", browser=sessions[other.username]) as ws:
        error, code = await refusal(ws)
        assert (error["code"], code) == ("forbidden", 3003)
    # Server-Sent Events ask the same rule: the other user is refused (403), the owner streams.
    refused = await asyncio.to_thread(event_stream_start, shop, topic, sessions[other.username])
    assert refused[0] == 403 and json.loads(refused[2])["error"] == "forbidden"
    streaming = await asyncio.to_thread(event_stream_start, shop, topic, sessions[owner.username])
    assert streaming[:2] == (200, "text/event-stream"), streaming
    async with connect(shop, f"topics={topic}&history=0", browser=sessions[owner.username]) as ws:
        await ws.send("*")
        assert await next_echo(ws) == "*"
        # The shop hands the order to the other user and says so: the owner's socket asks again.
        code = (
            f"order = Order.objects.get(pk={order_id}); order.owner_id = {other.id}; order.save()\n"
            "from echo.access.revocation import access_changed\n"
            f"access_changed(User.objects.get(pk={owner.id}))"
        )
        started = time.monotonic()
        await asyncio.to_thread(orm, code)
        error, code_ = await refusal(ws, served=True)
        assert (error["code"], code_) == ("forbidden", 3003)
        assert time.monotonic() - started < timeout(2)
    async with connect(shop, f"topics={topic}&history=0", browser=sessions[other.username]) as ws:
        await ws.send("*")
        assert await next_echo(ws) == "*"
