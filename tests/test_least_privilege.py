"""Least privilege, against real server processes: each finding of the outside review as a regression test.

1. A publishing key read every private topic; now a key reads only what it was granted, within the rules.
2. A short pattern froze a worker; now patterns are linear-time matchers with bounded size.
3. Malformed patterns crashed (500, a traceback, ``manage.py check``); now they are refused in one line.
4. Revocation waited for a token's expiry or for ever; now it closes the sockets within 2 s, on every server.
5. Logins were not throttled; now repeated failures are refused with a clear page.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from echo.access.patterns import MAX_WILDCARDS, PatternError, parse
from tests.helpers.accounts import Browser, create_accounts, new_account
from tests.helpers.clients import next_echo
from tests.helpers.private_topics import RULES_WITH_PERMISSIONS, connect, publish, receive_frames, refusal
from tests.helpers.processes import ROOT, SERVER_COMMANDS, Server, start_server, timeout
from tests.helpers.publishing import api_key, create_key, unique_name

REVOKED_WITHIN = 2.0  # seconds: the bound for a revocation to close every socket


@pytest.fixture
def strict(server_env: dict[str, str]) -> Iterator[Server]:
    """A production server under rules with permissions, groups, login-only and nobody's topics."""
    env = {**server_env, "WS_TOPIC_ACCESS": json.dumps(RULES_WITH_PERMISSIONS)}
    with start_server(SERVER_COMMANDS["production"], env) as server:
        yield server


def key_token(server: Server, key: str, topics: list[str] | None = None) -> Any:
    """POST /api/token with an API key; the answer."""
    return Browser(server).post_json(
        "/api/token",
        None if topics is None else {"topics": topics},
        csrf=False,
        Authorization=f"Bearer {key}",
    )


async def assert_refused(server: Server, topic: str, protocols: list[str], code: tuple[str, int]) -> None:
    async with connect(server, f"topics={topic}&history=0", protocols=protocols) as ws:
        error, close_code = await refusal(ws)
    assert (error["code"], close_code) == code, topic


# ---------------------------------------------------------------- 1. a key reads only its read grant


async def test_a_key_without_a_read_grant_gets_no_token_and_its_old_power_is_gone(strict: Server) -> None:
    publisher = create_key("*")  # as the issue's `api_key create NAME` made it: every topic to publish
    answer = key_token(strict, publisher)
    assert (answer.status, answer.json()["error"]) == (403, "forbidden")
    listed = Browser(strict).request("/api/topics", headers={"Authorization": f"Bearer {publisher}"})
    assert listed.status == 200
    # Not one topic that only some reader may see: the key is not that reader.
    assert not [t for t in listed.json()["topics"] if t["name"].startswith(("user-", "ops-", "team-red-"))]


async def test_a_read_grant_is_narrowed_by_the_rules(strict: Server, topic: str, layer: object) -> None:
    owner = new_account()
    create_accounts(owner)
    await publish(owner.topic, 1.0, layer)
    name = unique_name()
    key = create_key("", name=name, read="*")
    issued = key_token(strict, key)
    assert issued.status == 200, issued
    protocols = issued.json()["protocols"]
    forbidden = ("forbidden", 3003)
    # owner: a key is never the owner; nobody: nobody; perm:, group: need a user who has them.
    for refused in (owner.topic, "user-0", "user-abc", "ops-1", "team-red-x"):
        await assert_refused(strict, refused, protocols, forbidden)
    # public and login-only topics of its grant: it authenticated, and was granted them.
    for allowed in (topic, "members-news"):
        async with connect(strict, f"topics={allowed}&history=0", protocols=protocols) as ws:
            await ws.send("*")
            assert await next_echo(ws) == "*", allowed
            (presence,) = await receive_frames(ws, "presence")
            if allowed == "members-news":
                assert presence["users"] == [f"key:{name}"]
    listed = Browser(strict).request("/api/topics", headers={"Authorization": f"Bearer {key}"}).json()
    names = {entry["name"] for entry in listed["topics"]}
    assert owner.topic not in names


async def test_a_narrow_read_grant_and_a_token_narrowed_further(strict: Server, topic: str) -> None:
    key = create_key("", read=f"{topic}*,ops-*")
    protocols = key_token(strict, key).json()["protocols"]
    await assert_refused(strict, "ops-1", protocols, ("forbidden", 3003))  # granted, but a perm: rule
    await assert_refused(strict, "prices", protocols, ("forbidden", 3003))  # public, but not granted
    async with connect(strict, f"topics={topic}-a&history=0", protocols=protocols) as ws:
        await ws.send("*")
        assert await next_echo(ws) == "*"
    # A token asked for less carries less; one asked for more carries no more than the key.
    narrowed = key_token(strict, key, [f"{topic}-b"]).json()["protocols"]
    await assert_refused(strict, f"{topic}-a", narrowed, ("forbidden", 3003))
    wider = key_token(strict, key, ["*"]).json()["protocols"]
    await assert_refused(strict, "prices", wider, ("forbidden", 3003))


# ---------------------------------------------------------------- 2. patterns that cannot hang anything


BACKTRACKING = [
    ("a" + "*" * MAX_WILDCARDS + "b", "a" * 48),
    ("*a*a*a*a*a*a*a*b", "a" * 48),
    ("a*" * (MAX_WILDCARDS - 1) + "a*b", "a" * 47 + "c"),
    ("user-{user_id}-*-*-*-*-*-x", "user-1234567890123456789-" + "-" * 20 + "y"),
    ("*-*-*-*-*-*-*-*", "-" * 7),
]


@pytest.mark.parametrize(("pattern", "topic"), BACKTRACKING)
def test_patterns_built_to_backtrack_decide_in_well_under_a_millisecond(pattern: str, topic: str) -> None:
    matcher = parse(pattern)
    started = time.perf_counter()
    for _ in range(100):
        matcher.match(topic)
    each = (time.perf_counter() - started) / 100
    assert each < 0.001, f"{pattern!r} on {topic!r}: {each * 1e6:.0f} µs"


def test_oversize_patterns_are_refused() -> None:
    for pattern in ("a" + "*" * 20 + "b", "a" * 101, "*" * (MAX_WILDCARDS + 1)):
        with pytest.raises(PatternError):
            parse(pattern)


async def test_a_backtracking_token_pattern_costs_the_neighbours_nothing(production_server: Server) -> None:
    account = new_account()
    create_accounts(account)
    browser = Browser(production_server)
    browser.log_in(account)
    refused = browser.post_json("/api/token", {"topics": ["a" + "*" * 20 + "b"]})
    assert (refused.status, refused.json()["error"]) == (400, "bad_topics")
    issued = browser.connection_token(topics=["a" + "*" * MAX_WILDCARDS + "b"])
    async with websockets.connect(production_server.ws_url(), origin=production_server.origin) as neighbour:
        started = time.monotonic()
        await assert_refused(production_server, "a" * 48, issued["protocols"], ("forbidden", 3003))
        await neighbour.send("*")
        assert await next_echo(neighbour) == "*"
        # Before: about 5 s for this worker to answer anyone. A generous bound, not a speed target.
        assert time.monotonic() - started < timeout(2)


# ---------------------------------------------------------------- 3. malformed patterns: one clear line


async def test_a_malformed_pattern_is_a_400_never_a_500(production_server: Server) -> None:
    account = new_account()
    create_accounts(account)
    browser = Browser(production_server)
    browser.log_in(account)
    for pattern in ("user-{user_id}{user_id}", "{user_id}*", "{Nope}", "{slug}_x", "x" * 101, 7):
        answer = browser.post_json("/api/token", {"topics": [pattern]})
        assert (answer.status, answer.json()["error"]) == (400, "bad_topics"), pattern
        assert "Traceback" not in answer.body
    assert "Traceback" not in production_server.output.drain(seconds=1)


@pytest.mark.parametrize(
    "rules",
    [{"user-{user_id}{user_id}": "owner"}, {"a" + "*" * 20: "public"}, {"x": 5}, {"{user_id}*": "owner"}],
)
def test_a_malformed_rule_is_echo_E001_from_manage_py_check(rules: dict[str, Any]) -> None:
    result = subprocess.run(  # noqa: PLW1510 - the exit code is asserted
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**os.environ, "WS_TOPIC_ACCESS": json.dumps(rules)},
        capture_output=True,
        text=True,
        timeout=timeout(60),
    )
    assert result.returncode == 1
    assert "(echo.E001) WS_TOPIC_ACCESS" in result.stderr and "Traceback" not in result.stderr, result.stderr


# ---------------------------------------------------------------- 4. revocation takes effect now


def change_user(username: str, code: str) -> None:
    """Run ``code`` on the user in a process of its own, as an admin's save would (signals and all)."""
    script = (
        f"from django.contrib.auth.models import User\nuser = User.objects.get(username={username!r})\n{code}"
    )
    result = subprocess.run(  # noqa: PLW1510 - the exit code is asserted
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout(60),
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def closed_with(ws: Any, since: float) -> tuple[str, int, float]:
    """The error frame's code, the close code and the seconds from ``since``, skipping data frames."""
    error, code = await refusal(ws, served=True)
    assert code is not None
    return error["code"], code, time.monotonic() - since


@pytest.fixture
def two_servers(server_env: dict[str, str]) -> Iterator[tuple[Server, Server]]:
    """Two production servers on one database and one Redis, as two replicas behind a balancer."""
    with (
        start_server(SERVER_COMMANDS["production"], server_env) as first,
        start_server(SERVER_COMMANDS["production"], server_env) as second,
    ):
        yield first, second


@pytest.mark.parametrize(
    ("change", "session_close", "token_close"),
    [
        ("user.is_active = False; user.save()", ("session_ended", 3003), ("revoked", 3003)),
        ("user.delete()", ("session_ended", 3003), ("revoked", 3003)),
        ("user.set_password('another one'); user.save()", ("session_ended", 3003), ("token_revoked", 3000)),
    ],
    ids=["deactivated", "deleted", "new-password"],
)
async def test_a_changed_user_loses_every_socket_on_both_servers_within_2_s(
    two_servers: tuple[Server, Server],
    change: str,
    session_close: tuple[str, int],
    token_close: tuple[str, int],
) -> None:
    first, second = two_servers
    account = new_account()
    create_accounts(account)
    browser = Browser(first)
    browser.log_in(account)
    protocols = browser.connection_token()["protocols"]
    bystander = new_account()
    create_accounts(bystander)
    other = Browser(second)
    other.log_in(bystander)
    query = f"topics={account.topic}&history=0"
    async with (
        connect(first, query, browser=browser) as by_cookie,
        connect(second, query, protocols=protocols) as by_token,
        connect(second, f"topics={bystander.topic}&history=0", browser=other) as unaffected,
    ):
        for ws in (by_cookie, by_token):
            await ws.send("*")
            assert await next_echo(ws) == "*"
        await asyncio.to_thread(change_user, account.username, change)
        started = time.monotonic()
        results = await asyncio.gather(closed_with(by_cookie, started), closed_with(by_token, started))
        assert [result[:2] for result in results] == [session_close, token_close]
        assert max(result[2] for result in results) < REVOKED_WITHIN, results
        await unaffected.send("*")
        assert await next_echo(unaffected) == "*"
    # And the old token opens nothing any more.
    await assert_refused(
        second,
        account.topic,
        protocols,
        ("bad_token" if token_close[0] == "revoked" else "token_revoked", 3000),
    )


async def test_logging_out_closes_that_session_s_sockets_only(two_servers: tuple[Server, Server]) -> None:
    first, second = two_servers
    account = new_account()
    create_accounts(account)
    leaving, staying = Browser(first), Browser(second)
    leaving.log_in(account)
    staying.log_in(account)
    query = f"topics={account.topic}&history=0"
    async with (
        connect(second, query, browser=leaving) as left,
        connect(first, query, browser=staying) as kept,
    ):
        for ws in (left, kept):
            await ws.send("*")
            assert await next_echo(ws) == "*"
        started = time.monotonic()
        answer = leaving.post_json("/accounts/logout/")  # with the CSRF header, as a page's form would
        assert answer.status == 200 and not leaving.cookie("sessionid"), answer
        code, close_code, seconds = await closed_with(left, started)
        assert (code, close_code) == ("logged_out", 3003) and seconds < REVOKED_WITHIN
        await kept.send("*")
        assert await next_echo(kept) == "*"


async def test_revoking_a_key_closes_its_token_s_sockets_on_both_servers(
    two_servers: tuple[Server, Server], topic: str
) -> None:
    first, second = two_servers
    name = unique_name()
    key = create_key("", name=name, read=f"{topic}*")
    protocols = key_token(first, key).json()["protocols"]
    async with (
        connect(first, f"topics={topic}&history=0", protocols=protocols) as one,
        connect(second, f"topics={topic}&history=0", protocols=protocols) as two,
    ):
        for ws in (one, two):
            await ws.send("*")
            assert await next_echo(ws) == "*"
        assert (await asyncio.to_thread(api_key, "revoke", name)).returncode == 0
        started = time.monotonic()
        results = await asyncio.gather(closed_with(one, started), closed_with(two, started))
    assert [result[:2] for result in results] == [("revoked", 3003)] * 2
    assert max(result[2] for result in results) < REVOKED_WITHIN, results


# ---------------------------------------------------------------- 5. login throttling


@pytest.fixture
def fresh_database(server_env: dict[str, str]) -> Iterator[tuple[Server, dict[str, str]]]:
    """A production server on a database of its own (lockouts here never touch the other tests'),
    and its environment."""
    directory = tempfile.mkdtemp(prefix="wsdemo-throttle-")
    env = {**server_env, "DATABASE_URL": f"sqlite:///{directory}/db.sqlite3", "LOGIN_FAILURE_LIMIT": "5"}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    with start_server(SERVER_COMMANDS["production"], env) as server:
        yield server, env
    shutil.rmtree(directory, ignore_errors=True)


def test_repeated_wrong_passwords_lock_the_login_with_a_clear_page(
    fresh_database: tuple[Server, dict[str, str]],
) -> None:
    server, env = fresh_database
    account = new_account()
    create_accounts(account, env=env)
    wrong = new_account()
    wrong.username = account.username
    browser = Browser(server)
    for _ in range(4):
        answer = browser.log_in(wrong)
        assert answer.status == 200 and "did not match" in answer.body
    locked = browser.log_in(wrong)  # the fifth failure locks
    assert locked.status == 429 and "Too many failed logins" in locked.body
    right = Browser(server).log_in(account)  # the right password, too late: refused all the same
    assert right.status == 429 and "Too many failed logins" in right.body
