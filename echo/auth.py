"""Who opens a WebSocket: the user of a connection token, else of the session cookie, else anonymous.

The consumer asks only when a connection wants a topic that is not public (``echo.access``), so a
public connection costs no session or user query. A project that wraps its WebSocket routes in
Channels' ``AuthMiddlewareStack`` gets that ``scope["user"]`` used instead of the cookie.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from channels.auth import get_user
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.http.cookie import parse_cookie

from echo import tokens
from echo.access import Reader, parse_patterns
from echo.models import ApiKey


async def connection_reader(scope: dict[str, Any]) -> tuple[Reader, tokens.Token | None]:
    """Who is connecting, and the token they came with (None: a session or nobody).

    Raises ``tokens.TokenError`` for a token that is forged, expired, or whose user or key is gone.
    """
    offered = tokens.offered_token(scope.get("subprotocols") or [])
    if offered is not None:
        token = tokens.read(offered)
        return await _token_reader(token), token
    if "user" in scope:  # Channels' AuthMiddlewareStack resolved it before the consumer runs
        return Reader(scope["user"]), None
    return Reader(await session_user(scope)), None


async def _token_reader(token: tokens.Token) -> Reader:
    if token.user_id is not None:
        user = await get_user_model()._default_manager.filter(pk=token.user_id, is_active=True).afirst()
        if user is None:
            raise tokens.TokenError("bad_token", "the connection token's user is no longer active")
        return Reader(user, token_topics=token.topics)
    key = await ApiKey.objects.filter(digest__startswith=token.key_id).afirst() if token.key_id else None
    if key is None:
        raise tokens.TokenError("bad_token", "the connection token's API key was revoked")
    return Reader(AnonymousUser(), key=key, key_topics=parse_patterns(key.topics), token_topics=token.topics)


async def session_user(scope: dict[str, Any]) -> Any:
    """The user of the session cookie in the handshake (Django's session engine), or AnonymousUser."""
    cookies: dict[str, str] = {}
    for name, value in scope.get("headers") or ():
        if name == b"cookie":
            cookies.update(parse_cookie(value.decode("latin1")))
    session_key = cookies.get(settings.SESSION_COOKIE_NAME)
    if not session_key:
        return AnonymousUser()
    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    return await get_user({"session": session})
