"""Who opens a WebSocket, and whether they still may: a connection token, else the session cookie.

The consumer asks only when a connection wants a topic that is not public (``echo.access``) or offers
a token, so a public connection costs no session or user query. A project that wraps its WebSocket
routes in Channels' ``AuthMiddlewareStack`` gets that ``scope["user"]`` used instead of the cookie.

Who got in is kept as a ``Credential``. When something may have taken it back (``echo.access.revocation``:
a user deactivated, deleted, logged out or given a new password, a key revoked) the consumer asks
``Credential.revoked``, which looks again at the database and answers why the connection must close.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from channels.auth import get_user
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.http.cookie import parse_cookie
from django.utils.crypto import salted_hmac

from echo.access import tokens
from echo.access.apikeys import read_grant
from echo.access.rules import Reader
from echo.errors import CLOSE_FORBIDDEN, CLOSE_UNAUTHORIZED, ClientError
from echo.models import ApiKey

KEY_ID_LENGTH = 16  # hex digits of a key's digest that name it in a token (64 bits)


def key_id(key: ApiKey) -> str:
    """How tokens and revocation events name a key: the start of its digest, which dies with it."""
    return str(key.digest[:KEY_ID_LENGTH])


def password_stamp(user: Any) -> str:
    """A short value that changes when the user's password does (from Django's session auth hash).

    Kept in a user's connection tokens: an HMAC of the hash, so a token, which anyone holding it may
    read, reveals nothing of it.
    """
    return salted_hmac("echo.password-stamp", user.get_session_auth_hash()).hexdigest()[:16]


def session_digest(session_key: str) -> str:
    """How a revocation event names a session without carrying its key (which logs in as the user)."""
    return hashlib.sha256(session_key.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Credential:
    """What a connection was let in with: a user's session or token, or an API key's token."""

    user_id: int | None = None
    key_id: str | None = None
    session_key: str | None = None  # the session's connections
    stamp: str | None = None  # a user token's password_stamp

    async def revoked(self, session: str | None = None) -> ClientError | None:
        """Why this credential no longer lets its connection stay open, or None if it still does.

        ``session`` is the digest of a session that has just logged out. One database query.
        """
        if self.key_id is not None:
            if await ApiKey.objects.filter(digest__startswith=self.key_id).aexists():
                return None
            return ClientError("revoked", "the API key was revoked", CLOSE_FORBIDDEN)
        if self.session_key is not None:
            return await self._session_revoked(self.session_key, session)
        user = await _active_user(self.user_id)
        if user is None:
            return ClientError("revoked", "the user was deactivated or deleted", CLOSE_FORBIDDEN)
        if password_stamp(user) != self.stamp:
            return ClientError("token_revoked", "the password changed: get a new token", CLOSE_UNAUTHORIZED)
        return None

    async def _session_revoked(self, session_key: str, logged_out: str | None) -> ClientError | None:
        if logged_out is not None and logged_out == session_digest(session_key):
            return ClientError("logged_out", "the session was logged out", CLOSE_FORBIDDEN)
        user = await _session_user_of(session_key)
        if user.is_authenticated and user.pk == self.user_id:
            return None
        detail = "the session ended (logged out, new password or user deactivated): log in again"
        return ClientError("session_ended", detail, CLOSE_FORBIDDEN)


async def connection_reader(scope: dict[str, Any]) -> tuple[Reader, tokens.Token | None, Credential | None]:
    """Who is connecting, the token they came with (None: a session or nobody), and their credential
    (None for nobody).

    Raises ``tokens.TokenError`` for a token that is forged or expired, or whose user or key is gone
    or whose user's password changed since.
    """
    offered = tokens.offered_token(scope.get("subprotocols") or [])
    if offered is not None:
        token = tokens.read(offered)
        reader, credential = await _token_reader(token)
        return reader, token, credential
    if "user" in scope:  # Channels' AuthMiddlewareStack resolved it before the consumer runs
        user, session = scope["user"], scope.get("session")
        session_key = getattr(session, "session_key", None)
    else:
        session_key = _session_key(scope)
        user = await _session_user_of(session_key) if session_key else AnonymousUser()
    if not user.is_authenticated or session_key is None:
        return Reader(user), None, None
    return Reader(user), None, Credential(user_id=user.pk, session_key=session_key)


async def _token_reader(token: tokens.Token) -> tuple[Reader, Credential]:
    if token.user_id is not None:
        user = await _active_user(token.user_id)
        if user is None:
            raise tokens.TokenError("bad_token", "the connection token's user is no longer active")
        if token.auth_hash != password_stamp(user):
            raise tokens.TokenError("token_revoked", "the password changed since this token was issued")
        credential = Credential(user_id=user.pk, stamp=token.auth_hash)
        return Reader(user, token_topics=token.topics), credential
    key = await ApiKey.objects.filter(digest__startswith=token.key_id).afirst() if token.key_id else None
    if key is None:
        raise tokens.TokenError("bad_token", "the connection token's API key was revoked")
    reader = Reader(AnonymousUser(), key=key, key_read=read_grant(key), token_topics=token.topics)
    return reader, Credential(key_id=key_id(key))


async def _active_user(user_id: int | None) -> Any:
    return await get_user_model()._default_manager.filter(pk=user_id, is_active=True).afirst()


def _session_key(scope: dict[str, Any]) -> str | None:
    cookies: dict[str, str] = {}
    for name, value in scope.get("headers") or ():
        if name == b"cookie":
            cookies.update(parse_cookie(value.decode("latin1")))
    return cookies.get(settings.SESSION_COOKIE_NAME) or None


async def _session_user_of(session_key: str) -> Any:
    """The user of a session (Django's session engine and its auth hash check), or AnonymousUser."""
    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    return await get_user({"session": session})
