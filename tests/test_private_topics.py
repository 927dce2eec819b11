"""Private topics against real server processes: who may read what, session cookies and connection tokens.

Users are real rows in the database the server uses (the session's SQLite file; the core test also a
PostgreSQL database of its own), logged in through Django's login form; frames come from the real
publisher through Redis; clients are the `websockets` library's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from django.core import signing

from echo.layer.channel_layer import RedisFanoutChannelLayer
from tests.helpers.accounts import Browser, create_accounts, new_account
from tests.helpers.clients import next_echo
from tests.helpers.private_topics import (
    PROTOCOL,
    RULES_WITH_PERMISSIONS,
    TOKEN_PREFIX,
    connect,
    publish,
    receive_frames,
    refusal,
)
from tests.helpers.processes import SERVER_COMMANDS, Server, start_server
from tests.helpers.publishing import api_key, create_key, unique_name


@pytest.fixture
def production(server_env: dict[str, str]) -> Iterator[Server]:
    with start_server(SERVER_COMMANDS["production"], server_env) as running:
        yield running


async def test_the_owner_reads_their_topic_and_nobody_else_does(database_env: dict[str, str]) -> None:
    owner, other, admin = new_account(), new_account(), new_account(superuser=True)
    create_accounts(owner, other, admin, env=database_env)
    layer = RedisFanoutChannelLayer(  # the server's namespace
        hosts=[database_env["REDIS_URL"]], prefix=database_env["CHANNEL_LAYER_PREFIX"]
    )
    with start_server(SERVER_COMMANDS["production"], database_env) as server:
        browsers = {}
        for account in (owner, other, admin):
            browsers[account.username] = Browser(server)
            assert browsers[account.username].log_in(account).path == "/"
        await publish(owner.topic, 1.0, layer)

        # Anonymous and another user: refused, with the code the page acts on.
        async with connect(server, f"topics={owner.topic}") as ws:
            error, code = await refusal(ws)
            assert (error["code"], code) == ("forbidden", 3003)
        async with connect(server, f"topics={owner.topic}", browser=browsers[other.username]) as ws:
            error, code = await refusal(ws)
            assert (error["code"], code) == ("forbidden", 3003)
            assert owner.topic in error["detail"]

        # The owner (session cookie) and a superuser are served: history, then live frames.
        async with (
            connect(server, f"topics={owner.topic}", browser=browsers[owner.username]) as mine,
            connect(server, f"topics={owner.topic}", browser=browsers[admin.username]) as admins,
        ):
            for ws in (mine, admins):
                assert [f["values"] for f in await receive_frames(ws, "data")] == [{"v": 1.0}]
            seq = await publish(owner.topic, 2.0, layer)
            for ws in (mine, admins):
                (frame,) = await receive_frames(ws, "data")
                assert (frame["topic"], frame["seq"], frame["values"]) == (owner.topic, seq, {"v": 2.0})
    await layer.flush()


async def test_one_forbidden_topic_refuses_the_whole_request(
    production: Server, topic: str, layer: object
) -> None:
    """A client never believes it watches what it does not: nothing of the public topic either."""
    account = new_account()
    create_accounts(account)
    await publish(topic, 1.0)
    async with connect(production, f"topics={topic},user-{account.id}&history=10") as ws:
        error, code = await refusal(ws)
    assert (error["code"], code) == ("forbidden", 3003)
    assert f"user-{account.id}" in error["detail"] and topic not in error["detail"]


async def test_any_other_user_topic_name_is_nobodys(production: Server) -> None:
    admin = new_account(superuser=True)
    create_accounts(admin)
    browser = Browser(production)
    browser.log_in(admin)
    for name in ("user-abc", "user-0", "user-"):
        async with connect(production, f"topics={name}", browser=browser) as ws:
            error, code = await refusal(ws)
            assert (error["code"], code) == ("forbidden", 3003), name


async def test_permission_group_and_login_rules(server_env: dict[str, str], layer: object) -> None:
    env = {**server_env, "WS_TOPIC_ACCESS": json.dumps(RULES_WITH_PERMISSIONS)}
    plain = new_account()
    viewer = new_account(perms=["auth.view_user"])
    red = new_account(groups=["red"])
    create_accounts(plain, viewer, red)
    with start_server(SERVER_COMMANDS["production"], env) as server:
        sessions = {}
        for account in (plain, viewer, red):
            sessions[account.username] = Browser(server)
            sessions[account.username].log_in(account)
        cases = [
            ("ops-metrics", None, False),
            ("ops-metrics", plain, False),
            ("ops-metrics", viewer, True),
            ("team-red-board", viewer, False),
            ("team-red-board", red, True),
            ("members-news", None, False),
            ("members-news", plain, True),
        ]
        for topic, account, allowed in cases:
            browser = sessions[account.username] if account else None
            async with connect(server, f"topics={topic}&history=0", browser=browser) as ws:
                who = account.username if account else "anonymous"
                if allowed:
                    await ws.send("*")
                    assert await next_echo(ws) == "*", (topic, who)
                else:
                    error, code = await refusal(ws)
                    assert (error["code"], code) == ("forbidden", 3003), (topic, who)


async def test_a_connection_token_replaces_the_cookie_and_is_not_logged(
    any_server: Server, layer: object
) -> None:
    server = any_server  # the development server and the server server
    owner = new_account()
    create_accounts(owner)
    browser = Browser(server)
    browser.log_in(owner)
    issued = browser.connection_token()
    assert issued["protocols"] == [PROTOCOL, TOKEN_PREFIX + issued["token"]]
    assert 0 < issued["expires_in"] <= 3600
    await publish(owner.topic, 5.0)
    async with connect(server, f"topics={owner.topic}", protocols=issued["protocols"]) as ws:  # no cookie
        assert ws.subprotocol == PROTOCOL
        assert [f["values"] for f in await receive_frames(ws, "data")] == [{"v": 5.0}]
    server.output.drain(seconds=1)
    assert issued["token"] not in server.output.text()
    assert browser.cookie("sessionid") not in server.output.text()


async def test_a_token_narrowed_to_topics_opens_only_those(production: Server, topic: str) -> None:
    account = new_account()
    create_accounts(account)
    browser = Browser(production)
    browser.log_in(account)
    issued = browser.connection_token(topics=[account.topic])
    async with connect(production, f"topics={account.topic}&history=0", protocols=issued["protocols"]) as ws:
        await ws.send("*")
        assert await next_echo(ws) == "*"
    async with connect(
        production, f"topics={topic}", protocols=issued["protocols"]
    ) as ws:  # public, not in it
        error, code = await refusal(ws)
        assert (error["code"], code) == ("forbidden", 3003)


async def test_forged_and_tampered_tokens_are_refused(production: Server) -> None:
    victim, attacker = new_account(), new_account()
    create_accounts(victim, attacker)
    browser = Browser(production)
    browser.log_in(attacker)
    token = browser.connection_token()["token"]
    payload, signature = token.rsplit(".", 1)
    claims = json.loads(signing.b64_decode(payload.encode()))
    assert claims["u"] == attacker.id
    victims_claims = signing.b64_encode(json.dumps({**claims, "u": victim.id}).encode()).decode()
    wrong_key = signing.Signer(key="guessed", sep=".", salt="echo.connection-token")
    tampered = [
        f"{victims_claims}.{signature}",  # the attacker's signature on the victim's claims
        wrong_key.sign_object({**claims, "u": victim.id}),  # signed with a guessed key
        f"{payload}.{signature[:-2]}AA",
        "not-a-token",
        "",
    ]
    for bad in tampered:
        async with connect(
            production, f"topics={victim.topic}", protocols=[PROTOCOL, TOKEN_PREFIX + bad]
        ) as ws:
            error, code = await refusal(ws)
            assert (error["code"], code) == ("bad_token", 3000), bad


async def test_getting_a_token_needs_a_login_and_the_csrf_token(production: Server) -> None:
    anonymous = Browser(production)
    anonymous.request("/")  # the page sets the CSRF cookie
    response = anonymous.post_json("/api/token")
    assert (response.status, response.json()["error"]) == (401, "login_required")

    account = new_account()
    create_accounts(account)
    browser = Browser(production)
    browser.log_in(account)
    assert browser.post_json("/api/token", csrf=False).status == 403  # a cross-site POST has no CSRF token
    assert browser.request("/api/token").status == 405
    for body in ({"topics": "user-1"}, {"topics": []}, {"topics": ["Bad!"]}):
        response = browser.post_json("/api/token", body)
        assert (response.status, response.json()["error"]) == (400, "bad_topics"), body
    response = browser.post_json("/api/token", {"other": 1})
    assert (response.status, response.json()["error"]) == (400, "bad_request")


async def test_an_expired_token_closes_the_connection_and_a_new_one_resumes_without_a_hole(
    server_env: dict[str, str], layer: object
) -> None:
    ttl = 2
    account = new_account()
    create_accounts(account)
    with start_server(SERVER_COMMANDS["production"], {**server_env, "WS_TOKEN_TTL": str(ttl)}) as server:
        browser = Browser(server)
        browser.log_in(account)
        issued = browser.connection_token()
        first = await publish(account.topic, 1.0)
        async with connect(server, f"topics={account.topic}&history=1", protocols=issued["protocols"]) as ws:
            (frame,) = await receive_frames(ws, "data")
            epoch, last = frame["epoch"], frame["seq"]
            assert last == first
            error, code = await refusal(ws, served=True)  # the token runs out while connected
        assert (error["code"], code) == ("token_expired", 3000)

        # The expired token is refused at the door too.
        async with connect(server, f"topics={account.topic}", protocols=issued["protocols"]) as ws:
            error, code = await refusal(ws)
            assert (error["code"], code) == ("token_expired", 3000)

        missed = [await publish(account.topic, float(value)) for value in range(2, 5)]
        renewed = browser.connection_token()
        since = f"{account.topic}:{last}:{epoch}"
        async with connect(
            server, f"topics={account.topic}&since={since}", protocols=renewed["protocols"]
        ) as ws:
            assert [f["seq"] for f in await receive_frames(ws, "data", count=3)] == missed


async def test_the_topic_list_shows_only_readable_topics(
    production: Server, topic: str, layer: object
) -> None:
    owner, other = new_account(), new_account()
    create_accounts(owner, other)
    for name in (topic, owner.topic, other.topic):
        await publish(name, 1.0)
    anonymous = Browser(production).request("/api/topics").json()["topics"]
    names = {entry["name"] for entry in anonymous}
    assert topic in names and owner.topic not in names and other.topic not in names
    browser = Browser(production)
    browser.log_in(owner)
    names = {entry["name"] for entry in browser.request("/api/topics").json()["topics"]}
    assert {topic, owner.topic} <= names and other.topic not in names


async def test_presence_on_a_private_topic_names_who_watches(production: Server) -> None:
    owner, admin = new_account(), new_account(superuser=True)
    create_accounts(owner, admin)
    sessions = {}
    for account in (owner, admin):
        sessions[account.username] = Browser(production)
        sessions[account.username].log_in(account)
    query = f"topics={owner.topic}&history=0"
    async with (
        connect(production, query, browser=sessions[owner.username]) as mine,
        connect(production, query, browser=sessions[admin.username]),
    ):
        while True:
            (frame,) = await receive_frames(mine, "presence")
            if frame["count"] == 2:
                break
        assert frame["users"] == sorted([owner.username, admin.username])
        assert frame["more_users"] == 0


async def test_public_topics_keep_an_anonymous_count(production: Server, topic: str) -> None:
    async with connect(production, f"topics={topic}&history=0") as ws:
        (frame,) = await receive_frames(ws, "presence")
    assert frame == {"type": "presence", "topic": topic, "count": 1}


async def test_an_api_key_gets_tokens_for_its_read_grant_only_until_it_is_revoked(production: Server) -> None:
    name = unique_name()
    key = create_key("", name=name, read="sensor-*")
    browser = Browser(production)
    assert browser.post_json("/api/token", csrf=False, Authorization="Bearer wrong").status == 401
    response = browser.post_json("/api/token", csrf=False, Authorization=f"Bearer {key}")  # no CSRF needed
    assert response.status == 200, response
    protocols = response.json()["protocols"]
    async with connect(production, "topics=sensor-1&history=0", protocols=protocols) as ws:
        await ws.send("*")
        assert await next_echo(ws) == "*"
    for outside in ("prices", "user-1"):
        async with connect(production, f"topics={outside}", protocols=protocols) as ws:
            error, code = await refusal(ws)
            assert (error["code"], code) == ("forbidden", 3003), outside
    assert api_key("revoke", name).returncode == 0
    async with connect(production, "topics=sensor-1", protocols=protocols) as ws:
        error, code = await refusal(ws)
        assert (error["code"], code) == ("bad_token", 3000)
    create_key("", name=name, read="sensor-*")  # a new key under the old name does not bring old tokens back
    async with connect(production, "topics=sensor-1", protocols=protocols) as ws:
        error, code = await refusal(ws)
        assert (error["code"], code) == ("bad_token", 3000)
    production.output.drain(seconds=1)
    assert key not in production.output.text()
