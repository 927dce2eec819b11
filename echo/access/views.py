"""HTTP endpoints for programs and the page: which topics the requester may read, and connection tokens."""

from __future__ import annotations

import json
from typing import Any

from channels.layers import get_channel_layer
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_POST
from redis.exceptions import RedisError

from echo.access import tokens
from echo.access.apikeys import authenticate_key, bearer_key, read_grant
from echo.access.identity import key_id, password_stamp
from echo.access.patterns import PatternError, parse
from echo.access.rules import Reader, topic_access
from echo.conf import app_settings
from echo.errors import UNAVAILABLE, api_error
from echo.layer.capabilities import capabilities
from echo.protocol import GROUP_PREFIX, group_topic

MAX_TOKEN_TOPICS = 64


async def session_user(request: HttpRequest) -> Any:
    """The request's logged-in user; anonymous in a project without Django's AuthenticationMiddleware."""
    auser = getattr(request, "auser", None)
    return await auser() if auser is not None else AnonymousUser()


async def request_reader(request: HttpRequest) -> Reader | JsonResponse:
    """Who asks: the holder of an API key (``Authorization: Bearer``), else the session's user.

    A key that is not valid is an error (401), not a fall back to anonymous.
    """
    key = bearer_key(request)
    if key is None:
        return Reader(await session_user(request))
    api_key = await authenticate_key(key)
    if api_key is None:
        return api_error(401, "unauthorized", "unknown or revoked API key")
    return Reader(AnonymousUser(), key=api_key, key_read=read_grant(api_key))


@require_GET
async def topics(request: HttpRequest) -> JsonResponse:
    """List the topics published to recently (those with history) that the requester may read.

    ``{"topics": [{"name": "prices", "seq": 1041}, ...]}``, sorted by name; 503 if Redis is away. On a
    channel layer that keeps no history, no topic is known: an empty list.
    """
    reader = await request_reader(request)
    if isinstance(reader, JsonResponse):
        return reader
    layer = get_channel_layer()
    if not capabilities(layer).numbered:
        return JsonResponse({"topics": []})
    try:
        groups = await layer.numbered_groups()
    except (RedisError, OSError) as exc:
        return api_error(503, UNAVAILABLE, f"Redis unreachable: {type(exc).__name__}")
    access = topic_access()
    listed = sorted(
        [
            {"name": group_topic(group), "seq": seq}
            for group, seq in groups
            if group.startswith(GROUP_PREFIX) and await access.can_read(reader, group_topic(group))
        ],
        key=lambda topic: topic["name"],
    )
    return JsonResponse({"topics": listed})


@csrf_exempt  # an API key is no cookie; the session case is CSRF-checked (csrf_protect) below
@require_POST
async def token(request: HttpRequest) -> JsonResponse:
    """Issue a short-lived connection token (``echo.access.tokens``) to a logged-in user or an API key holder.

    The body may be empty or ``{"topics": ["pattern", ...]}`` to narrow the token to those topics.
    Answers ``{"token", "expires", "expires_in", "protocols"}``: ``protocols`` is what to pass to
    ``new WebSocket(url, protocols)``. 401 without a session or a valid key; 403 for a session
    request without a valid CSRF token.
    """
    if bearer_key(request) is not None:
        return await _issue(request)
    if not (await session_user(request)).is_authenticated:
        return api_error(401, "login_required", "log in, or send an API key as Authorization: Bearer")
    return await _session_token(request)


@csrf_protect
async def _session_token(request: HttpRequest) -> JsonResponse:
    return await _issue(request)


async def _issue(request: HttpRequest) -> JsonResponse:
    reader = await request_reader(request)
    if isinstance(reader, JsonResponse):
        return reader
    if reader.key is None and not reader.user.is_authenticated:
        return api_error(401, "login_required", "log in, or send an API key as Authorization: Bearer")
    try:
        narrowed = _requested_topics(request.body)
    except ValueError as exc:
        code = "bad_topics" if isinstance(exc, PatternError) else "bad_request"
        return api_error(400, code, str(exc))
    ttl = app_settings.WS_TOKEN_TTL
    if reader.key is not None:
        if not reader.key_read:
            return api_error(
                403, "forbidden", "this API key has no read grant: its tokens could read nothing"
            )
        # A key's token carries no more than its read grant (checked again, against the key, on connect).
        signed, claims = tokens.issue(ttl=ttl, key_id=key_id(reader.key), topics=narrowed or reader.key_read)
    else:
        user = reader.user
        signed, claims = tokens.issue(
            ttl=ttl, user_id=user.pk, topics=narrowed, auth_hash=password_stamp(user)
        )
    return JsonResponse(
        {
            "token": signed,
            "expires": claims.expires,
            "expires_in": ttl,
            "protocols": [tokens.PROTOCOL, tokens.TOKEN_PROTOCOL_PREFIX + signed],
        }
    )


def _requested_topics(body: bytes) -> tuple[str, ...] | None:
    """The topic patterns a token is asked to be narrowed to; ``PatternError`` for a bad pattern."""
    if not body.strip():
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise ValueError("the body must be empty or a JSON object") from None
    if not isinstance(data, dict) or set(data) - {"topics"}:
        raise ValueError('the body must be empty or {"topics": [pattern, ...]}')
    if "topics" not in data:
        return None
    requested = data["topics"]
    if not isinstance(requested, list) or not requested or len(requested) > MAX_TOKEN_TOPICS:
        raise PatternError(f"topics must be a list of 1 to {MAX_TOKEN_TOPICS} topic patterns")
    for pattern in requested:
        parse(pattern)
    return tuple(requested)
