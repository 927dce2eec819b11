"""Connection tokens: short-lived signed proofs of who connects, for WebSockets without a session cookie.

A token names a user (or an API key) and, optionally, the only topics it may be used for, and carries
its own expiry time. It is signed with ``SECRET_KEY`` (Django's ``signing``, so ``SECRET_KEY_FALLBACKS``
rotation works) and readable by anyone who holds it: it says who, never a secret. Issued by
``POST /api/token`` (``echo.access.views``); checked by the consumer on connect (``echo.access.identity``).

A token travels in the ``Sec-WebSocket-Protocol`` header, offered beside the app's protocol name::

    new WebSocket(url, ["echo.v1", "echo.token." + token])

not in the URL, which proxies and servers write to their access logs. The characters of a token
(``A-Z a-z 0-9 - _ .``) are all allowed in a protocol name.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.core import signing

PROTOCOL = "echo.v1"
TOKEN_PROTOCOL_PREFIX = "echo.token."  # noqa: S105 - a protocol name, not a secret
_SALT = "echo.connection-token"


class TokenError(Exception):
    """A token that cannot be used: ``code`` is ``bad_token`` (forged, tampered, unreadable) or
    ``token_expired``."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Token:
    """What a valid token says: the user's id or the API key's id, its topics, and when it expires.

    A key's id is the start of its digest: unlike its name, it dies with the key (a key made again
    under the same name has another). A user's token also carries the start of the user's session
    auth hash (``auth_hash``), which changes with the password: a token from before a password change
    is refused, as Django refuses the sessions from before it.
    """

    user_id: int | None
    key_id: str | None
    topics: tuple[str, ...] | None
    expires: float
    auth_hash: str | None = None

    def remaining(self, now: float | None = None) -> float:
        """Seconds until it expires (negative once it has)."""
        return self.expires - (time.time() if now is None else now)


def _signer() -> signing.Signer:
    # "." as separator: the signed value is then a valid Sec-WebSocket-Protocol name.
    return signing.Signer(sep=".", salt=_SALT)


def issue(
    *,
    ttl: float,
    user_id: int | None = None,
    key_id: str | None = None,
    topics: tuple[str, ...] | None = None,
    auth_hash: str | None = None,
) -> tuple[str, Token]:
    """Sign a token for a user (or an API key), valid ``ttl`` seconds; return it and what it says."""
    if (user_id is None) == (key_id is None):
        raise ValueError("a token names exactly one of a user and an API key")
    expires = int(time.time() + ttl)
    payload: dict[str, object] = {"x": expires}
    if user_id is not None:
        payload["u"] = user_id
    if key_id is not None:
        payload["k"] = key_id
    if topics is not None:
        payload["t"] = list(topics)
    if auth_hash is not None:
        payload["h"] = auth_hash
    token = _signer().sign_object(payload, compress=False)
    return token, Token(user_id, key_id, topics, float(expires), auth_hash)


def read(token: str, now: float | None = None) -> Token:
    """Check a token's signature and expiry; return what it says, or raise ``TokenError``."""
    try:
        payload = _signer().unsign_object(token)
    except (signing.BadSignature, ValueError, UnicodeDecodeError):
        raise TokenError("bad_token", "the connection token is not valid") from None
    try:
        expires = float(payload["x"])
        user_id = payload.get("u")
        key_id = payload.get("k")
        topics = payload.get("t")
        auth_hash = payload.get("h")
        if topics is not None and not isinstance(topics, list):
            raise TypeError
        if auth_hash is not None and not isinstance(auth_hash, str):
            raise TypeError
        if (
            (user_id is None) == (key_id is None)
            or (user_id is not None and type(user_id) is not int)
            or (key_id is not None and not isinstance(key_id, str))
            or (
                topics is not None
                and not (isinstance(topics, list) and all(isinstance(t, str) for t in topics))
            )
        ):
            raise TypeError
    except (KeyError, TypeError, ValueError, AttributeError):
        raise TokenError("bad_token", "the connection token is not valid") from None
    claims = Token(user_id, key_id, tuple(topics) if topics is not None else None, expires, auth_hash)
    if claims.remaining(now) <= 0:
        raise TokenError("token_expired", "the connection token has expired: get a new one")
    return claims


def offered_token(subprotocols: list[str]) -> str | None:
    """The token a client offered among its WebSocket subprotocols, if any."""
    for protocol in subprotocols:
        if protocol.startswith(TOKEN_PROTOCOL_PREFIX):
            return protocol[len(TOKEN_PROTOCOL_PREFIX) :]
    return None
