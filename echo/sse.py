"""The Server-Sent Events consumer: ``GET /events/?topics=a,b``, the WebSocket's stream over plain HTTP.

The same stream contract (``echo.ws.relay``: history, ``since``, no gap, no duplicate, ``max_rate``),
the same rules (``echo.ws.admission``: per-address cap, topic rules, token expiry, revocation) and the
same frames, each one SSE event (``echo.ws.event_stream``). Who connects: the session cookie, or a
connection token as ``Authorization: Bearer <token>``. Origins are checked before this runs
(``wsproject/origin.py``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from typing import Any

from echo.access.tokens import TOKEN_PROTOCOL_PREFIX
from echo.conf import app_settings as settings
from echo.errors import (
    BEARER_CHALLENGE,
    CLOSE_FORBIDDEN,
    CLOSE_TRY_AGAIN_LATER,
    CLOSE_UNAUTHORIZED,
    ClientError,
)
from echo.ops import metrics
from echo.protocol import error_frame, group_topic
from echo.ws import connections
from echo.ws.admission import Admission
from echo.ws.event_stream import HEADERS, RETRY_MS, EventStreamSender
from echo.ws.relay import Relay
from echo.ws.runtime import DeliveredHttpConsumer
from echo.ws.subscription import parse_subscription

logger = logging.getLogger(__name__)

# A comment line this often keeps proxies and the browser from deciding an idle stream is dead, and
# finds a client that has gone (its write fails).
HEARTBEAT_SECONDS = 15.0

# A refusal before the stream starts is an HTTP status (EventSource does not reconnect after one),
# with the error's code in a JSON body, as the HTTP API answers.
STATUS = {CLOSE_UNAUTHORIZED: 401, CLOSE_FORBIDDEN: 403, CLOSE_TRY_AGAIN_LATER: 503}


def bearer_token(scope: dict[str, Any]) -> str | None:
    """The connection token of an ``Authorization: Bearer`` header, if any."""
    for name, value in scope.get("headers") or ():
        if name == b"authorization":
            scheme, _, token = value.decode("latin1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def header(scope: dict[str, Any], wanted: bytes) -> bytes | None:
    return next((value for name, value in scope.get("headers") or () if name == wanted), None)


class EventStreamConsumer(DeliveredHttpConsumer):
    """One event stream: the live data of chosen topics, as SSE events, until the client goes.

    Ends (the response completes; ``EventSource`` reconnects with ``Last-Event-ID``) when its token
    expires or its identity is revoked (a final ``error`` event first), when it fell
    ``CHANNEL_LAYER_CAPACITY`` messages behind, or when history cannot fill a hole. A client that stops
    reading holds the server's send (uvicorn's flow control), so its layer queue fills and is dropped;
    the production server closes a connection that stays unwritable (``WS_STALL_SECONDS``).
    """

    relay: Relay | None = None  # once admitted
    joined = False
    ended = False  # the response is complete
    heartbeat_seconds = HEARTBEAT_SECONDS
    _heartbeat: asyncio.TimerHandle | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.admission = Admission()
        self.groups: list[str] = []
        self.identity_scope: dict[str, Any] = {}

    def make_sender(self, send: Any, scope: dict[str, Any]) -> EventStreamSender:
        return EventStreamSender(send, {})

    @property
    def stream(self) -> EventStreamSender:
        sender = self.sender
        assert isinstance(sender, EventStreamSender)
        return sender

    # ------------------------------------------------------------ lifecycle

    async def handle(self, body: bytes) -> None:
        """Called once the request is in: admit, catch up on each topic (before joining it), join,
        start the response, then send what the client is owed."""
        try:
            if self.scope.get("method") != "GET":
                raise ClientError("bad_method", "an event stream is read with GET")
            default, numbered = settings.WS_HISTORY_DEFAULT, self.features.numbered
            most = self.channel_layer.history_length if numbered else default
            wants = parse_subscription(
                self.scope.get("query_string", b""),
                default_history=default,
                max_history=most,
                last_event_id=header(self.scope, b"last-event-id"),
            )
            token = bearer_token(self.scope)
            # Admission reads a token where a WebSocket offers it: among the subprotocols.
            self.identity_scope = {
                **self.scope,
                "subprotocols": [TOKEN_PROTOCOL_PREFIX + token] if token else [],
            }
            expired = functools.partial(self.send_to_self, "token.expired")
            await self.admission.admit(self.identity_scope, wants.topics, expired)
        except ClientError as error:
            await self.refuse_request(error)
            return
        self.stream.positions = dict(wants.since)
        self.relay = Relay(self.channel_layer, self.features, wants, self.sender, self.scope.get("client"))
        frames = await self.relay.start(self.channel_name)
        self.groups = [*self.relay.groups, *filter(None, [self.admission.identity_group])]
        for group in self.groups:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.send_headers(status=200, headers=HEADERS)
        await self.stream.send_body(f"retry: {RETRY_MS}\n\n")
        if self.features.presence:
            self.admission.presence(self.channel_layer, wants.topics, "join")
        self.joined = True
        connections.opened()
        metrics.inc("sse_connections_total")
        await self.sender.send_batched(frames)
        streams = self.relay.streams
        if streams is not None:
            note = self.stream.note(
                (group_topic(group), streams.position(group)) for group in self.relay.groups
            )
            if note:
                await self.stream.send_body(note)
        self._arm_heartbeat()

    async def disconnect(self) -> None:
        """Called when the client went or the response is complete: leave everything."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        self.sender.closing = True
        for group in self.groups:  # on Channels' own loop; on this project's layer, also done at the end
            await self.channel_layer.group_discard(group, self.channel_name)
        if self.joined and self.relay is not None:
            if self.features.presence:
                self.admission.presence(self.channel_layer, self.relay.wants.topics, "leave")
            connections.closed()
            self.joined = False
        self.admission.release()

    # ------------------------------------------------------------ channel-layer events

    async def relay_frame(self, event: dict[str, Any]) -> None:
        """Called with one pushed frame (Channels' own loop: one event at a time)."""
        await self.handle_layer_events([event])

    async def handle_layer_events(self, events: list[dict[str, Any]]) -> None:
        """Called with layer events in order (``Relay.relay``); the others come back to ``dispatch``."""
        try:
            if self.relay is not None and not self.closing:
                await self.relay.relay(events, self.dispatch)
        except ClientError as error:
            await self.end(error)

    async def layer_resync(self, event: dict[str, Any]) -> None:
        """Called after the server reconnected to Redis: what was published meanwhile."""
        if self.relay is not None:
            await self.sender.send_batched(await self.relay.catch_up_all())

    async def layer_overflow(self, event: dict[str, Any]) -> None:
        """Called when this client fell so far behind that the layer dropped its queue: end the stream;
        the browser reconnects with ``Last-Event-ID`` and gets exactly what it missed."""
        client, dropped = self.scope.get("client"), event["dropped"]
        logger.warning(
            "Ending the event stream of %s: %d pushed messages dropped (too slow)", client, dropped
        )
        metrics.inc("ws_dropped_total", "sse_overflow", dropped)
        metrics.inc("sse_closed_total", "overflow")
        await self.finish()

    async def token_expired(self, event: dict[str, Any]) -> None:
        """Called when the token expires: a final error event; the client reconnects with a new one."""
        await self.end(ClientError("token_expired", "the connection token has expired", CLOSE_UNAUTHORIZED))

    async def identity_revoked(self, event: dict[str, Any]) -> None:
        """Called when this stream's user or key may have lost its right (``echo.access.revocation``)."""
        if (
            not self.closing
            and (error := await self.admission.revoked(self.identity_scope, event)) is not None
        ):
            await self.end(error)

    async def sse_heartbeat(self, event: dict[str, Any]) -> None:
        """Called every ``heartbeat_seconds``: a comment line, which every client ignores."""
        if not self.closing:
            await self.stream.send_body(": ping\n\n")
            self._arm_heartbeat()

    # ------------------------------------------------------------ ending

    async def end(self, error: ClientError) -> None:
        """End the stream after a final ``error`` event saying why."""
        if self.closing:
            return
        logger.warning(
            "Ending the event stream of %s: %s: %s", self.scope.get("client"), error.code, error.detail
        )
        metrics.inc("sse_closed_total", error.code)
        await self.sender.send_batched([error_frame(error.code, error.detail)])
        await self.finish()

    async def finish(self) -> None:
        """Complete the response; nothing more piles up for it meanwhile (the end may wait behind a
        client that reads slowly)."""
        if self.ended:
            return
        self.ended = True
        for group in self.groups:
            await self.channel_layer.group_discard(group, self.channel_name)
        self.groups = []
        await self.stream.close()

    async def refuse_request(self, error: ClientError) -> None:
        """Answer a request that may not stream: an HTTP status and ``{"error": code, "detail": ...}``."""
        logger.warning(
            "Refused an event stream for %s: %s: %s", self.scope.get("client"), error.code, error.detail
        )
        metrics.inc("sse_refused_total", error.code)
        status = 429 if error.code == "too_many_connections" else STATUS.get(error.close_code, 400)
        headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
        if status == 401:
            headers.append((b"www-authenticate", BEARER_CHALLENGE.encode()))
        if error.code == "bad_method":
            status, headers = 405, [*headers, (b"allow", b"GET")]
        body = json.dumps({"error": error.code, "detail": error.detail}).encode()
        self.sender.closing = True
        await self.send_response(status, body, headers=headers)

    def _arm_heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        self._heartbeat = loop.call_later(self.heartbeat_seconds, self.send_to_self, "sse.heartbeat")
