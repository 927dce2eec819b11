"""Whether a connection may open and how long it may stay: its address's cap, the topics' rules, its
token's expiry and its identity's revocation.

A client never believes it watches what it does not: one topic it may not read refuses them all
(``forbidden``, 3003). Who it is comes from its connection token, else its session cookie
(``echo.access.identity``), looked up only if a topic is not public or a token is offered, so a public
connection costs no session or user query.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from echo.access.identity import Credential, connection_reader
from echo.access.revocation import identity_group
from echo.access.rules import topic_access
from echo.access.tokens import PROTOCOL, TokenError, offered_token
from echo.conf import app_settings as settings
from echo.errors import CLOSE_FORBIDDEN, CLOSE_TRY_AGAIN_LATER, CLOSE_UNAUTHORIZED, ClientError
from echo.ws.limits import per_address
from echo.ws.presence import presence_for


def accepted_protocol(scope: dict[str, Any]) -> str | None:
    """The subprotocol to accept: the app's, if the client offered it (as token holders do)."""
    return PROTOCOL if PROTOCOL in scope.get("subprotocols", ()) else None


class Admission:
    """One connection's right to be open: checked on connect, held until it ends or is taken back."""

    __slots__ = ("asked", "counted_address", "credential", "token_expiry", "viewer")

    def __init__(self) -> None:
        self.counted_address: str | None = None  # what it counts against, until release()
        self.viewer: str | None = None  # who presence lists on its topics that are not public
        self.credential: Credential | None = None  # who got in, if anyone: checked again on revocation
        self.token_expiry: asyncio.TimerHandle | None = None
        self.asked: tuple[str, ...] = ()  # topics the app decided (call: rules): asked again on revocation

    async def admit(
        self, scope: dict[str, Any], topics: tuple[str, ...], on_token_expiry: Callable[[], None]
    ) -> None:
        """Count the connection against its address's cap, then check it may read every topic; raise
        ``ClientError`` if not. A connection that came with a token gets ``on_token_expiry()`` called
        when the token expires."""
        self._count_address(scope)  # before any database query a refused address could cause
        access = topic_access()
        private = [topic for topic in topics if not access.is_public(topic)]
        if not private and offered_token(scope.get("subprotocols") or []) is None:
            return
        try:
            reader, token, self.credential = await connection_reader(scope)
        except TokenError as error:
            raise ClientError(error.code, error.detail, CLOSE_UNAUTHORIZED) from None
        denied = [topic for topic in topics if not await access.can_read(reader, topic)]
        if denied:
            raise ClientError("forbidden", f"not allowed to read {', '.join(denied)}", CLOSE_FORBIDDEN)
        if private:
            self.viewer = reader.name
            self.asked = tuple(topic for topic in private if access.decided_by_app(topic))
        if token is not None:
            self.token_expiry = asyncio.get_running_loop().call_later(token.remaining(), on_token_expiry)

    def _count_address(self, scope: dict[str, Any]) -> None:
        address = (scope.get("client") or (None,))[0]
        cap = settings.WS_MAX_CONNECTIONS_PER_ADDRESS
        self.counted_address = per_address.try_add(address, cap)
        if self.counted_address is None and not per_address.exempt(address, cap):
            raise ClientError(
                "too_many_connections", f"at most {cap} connections per address", CLOSE_TRY_AGAIN_LATER
            )

    @property
    def identity_group(self) -> str | None:
        """The group that hears when this connection's identity changes (``echo.access.revocation``)."""
        return identity_group(self.credential) if self.credential is not None else None

    async def revoked(self, scope: dict[str, Any], event: dict[str, Any]) -> ClientError | None:
        """Why the connection must close now that its identity changed, or None if it still may stay:
        its credential is checked again, and the app asked again about the topics it decides."""
        if self.credential is None:
            return None
        error = await self.credential.revoked(event.get("session"))
        if error is not None or not self.asked:
            return error
        try:
            reader, _, _ = await connection_reader(scope)
        except TokenError as expired:
            return ClientError(expired.code, expired.detail, CLOSE_UNAUTHORIZED)
        access = topic_access()
        denied = [topic for topic in self.asked if not await access.can_read(reader, topic)]
        if denied:
            return ClientError("forbidden", f"no longer allowed to read {', '.join(denied)}", CLOSE_FORBIDDEN)
        return None

    def presence(self, layer: Any, topics: tuple[str, ...], change: str) -> None:
        """Count the connection in (``join``) or out of (``leave``) its topics' presence; on topics that
        are not public, by name."""
        presence = presence_for(layer, settings.WS_PRESENCE_TTL)
        update = presence.join if change == "join" else presence.leave
        if self.viewer is None:
            update(topics)
            return
        access = topic_access()
        update(tuple(topic for topic in topics if access.is_public(topic)))
        update(tuple(topic for topic in topics if not access.is_public(topic)), self.viewer)

    def release(self) -> None:
        """Called when the connection ends: stop its token's timer, uncount its address."""
        if self.token_expiry is not None:
            self.token_expiry.cancel()
            self.token_expiry = None
        per_address.remove(self.counted_address)
