"""How the consumers run: Channels' ``as_asgi``, ``__call__`` and ``dispatch``, re-implemented here.

The WebSocket consumer (``echo.consumers``) and the Server-Sent Events one (``echo.sse``) run the same
way; only their way out to the client (``Sender``, ``EventStreamSender``) differs.

Every Channels internal the project relies on is in this module, with a contract test each
(``tests/test_internals_app.py``) and a startup version check (``TESTED``, ``wsproject/versions.py``):

* ``as_asgi``'s app returns the consumer's coroutine instead of awaiting it, and carries the same
  ``consumer_class`` / ``consumer_initkwargs`` attributes (one suspended frame fewer per connection);
* ``__call__`` runs ``serve`` on a layer that can call a consumer back (``attach``: this project's
  layer), else Channels' own loop;
* ``dispatch`` routes by ``get_handler_name`` without ``aclose_old_connections()``, a thread round
  trip per event (the consumer's only queries go through Django's async ORM, whose connections are
  health-checked: ``conn_health_checks``), and so does ``websocket_disconnect``, which a storm of
  closes otherwise queues behind one thread;
* ``base_send`` (set by Channels' ``__call__``) is what ``Sender`` sends through on Channels' loop;
* ``ProtocolTypeRouter.__call__`` picks from ``application_mapping``; ``FlatProtocolTypeRouter`` returns
  the chosen application's coroutine instead of awaiting it (as ``as_asgi``'s app does);
* ``URLRouter.__call__`` matches ``routes`` against the path; ``FlatURLRouter`` does the same and also
  returns the matched application's coroutine.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from asgiref.sync import markcoroutinefunction
from channels.consumer import AsyncConsumer, get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.http import AsyncHttpConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from channels.routing import ProtocolTypeRouter, URLRouter
from django.urls import Resolver404

from echo.layer.capabilities import Capabilities, capabilities
from echo.ws.connections import DIRECT_SEND_TEXT, DIRECT_WRITER
from echo.ws.delivery import Delivery
from echo.ws.sending import Sender

# The version tests/test_internals_app.py checked these against (requirements.txt's pin).
TESTED = {"channels": "4.3.2"}

# Layer sends started from timer callbacks, referenced until done (the loop keeps only weak references).
_pending_sends: set[asyncio.Future[None]] = set()


class DeliveredConsumer(AsyncConsumer):
    """A consumer whose pushed frames take ``echo.ws.delivery``'s route where the layer allows:
    handlers run one at a time (``turn``), frames go out through ``sender`` (``make_sender``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.turn = asyncio.Lock()
        # What serving sets, set first here. CPython shares one table of attribute names among a class's
        # instances, but stops adding names to it as more instances are made: while thousands connect
        # at once, a name first set after an await gives every one of them a dict of its own (400
        # bytes each). Subclasses set theirs in __init__ too.
        self.channel_layer: Any = None
        self.scope: dict[str, Any] = {}
        self.base_send: Any = None
        self._sender: Sender | None = None
        self.channel_name = ""
        self.delivery: Delivery | None = None  # on this project's layer, once serving

    @property
    def features(self) -> Capabilities:
        """What the channel layer can do (``echo.layer.capabilities``)."""
        return capabilities(self.channel_layer)

    def make_sender(self, send: Any, scope: dict[str, Any]) -> Sender:
        """The connection's way out, over the server's ``send``."""
        raise NotImplementedError

    @property
    def sender(self) -> Sender:
        if self._sender is None:  # on Channels' own loop: through the base_send it set
            self._sender = self.make_sender(self.base_send, self.scope)
        return self._sender

    @classmethod
    def as_asgi(cls, **initkwargs: Any) -> Any:
        channels_app = super().as_asgi(**initkwargs)

        def app(scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[None]:
            return cls(**initkwargs)(scope, receive, send)

        app.consumer_class = channels_app.consumer_class  # type: ignore[attr-defined]
        app.consumer_initkwargs = channels_app.consumer_initkwargs  # type: ignore[attr-defined]
        return functools.update_wrapper(app, cls, updated=())

    def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[None]:
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        if self.features.attach:
            return self.serve(scope, receive, send)
        return super().__call__(scope, receive, send)

    async def serve(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Run the connection: client frames dispatched one at a time, layer events through ``Delivery``."""
        self.scope, self.base_send = scope, send
        self._sender = self.make_sender(send, scope)
        self.channel_name = await self.channel_layer.new_channel()
        delivery = self.delivery = Delivery(
            self.channel_layer,
            self.channel_name,
            self.turn,
            self.handle_layer_events,
            direct=self._sender.direct is not None,
        )
        try:
            while True:
                message = await receive()
                async with self.turn:
                    await self.dispatch(message)
        except StopConsumer:
            pass
        finally:
            await delivery.stop()

    async def dispatch(self, message: dict[str, Any]) -> None:
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    def write_directly(self, offer: Callable[[Sequence[Any]], bool], busy: Callable[[], None]) -> None:
        """From now on, offer new layer events to ``offer`` first: it writes them at once and returns
        True if it can (the server's synchronous write, ``Sender.direct``), else False to queue them.
        ``busy()`` is called when an event is queued, and when the connection ends.

        Has no effect on Channels' own loop, or when the server cannot write synchronously.
        """
        if self.delivery is not None and self.sender.direct is not None:
            self.delivery.try_now, self.delivery.busy = offer, busy

    async def handle_layer_events(self, events: list[dict[str, Any]]) -> None:
        """Called by ``Delivery`` with the layer events waiting, in order."""
        for event in events:
            await self.dispatch(event)

    def send_to_self(self, event_type: str) -> None:
        """From a timer callback: an event through the layer, so it is handled in turn like any other."""
        task = asyncio.ensure_future(self.channel_layer.send(self.channel_name, {"type": event_type}))
        _pending_sends.add(task)
        task.add_done_callback(_pending_sends.discard)

    @property
    def closing(self) -> bool:
        """True once the server decided to close: nothing more is sent."""
        return self.sender.closing


class DeliveredWebsocketConsumer(DeliveredConsumer, AsyncWebsocketConsumer):
    """An ``AsyncWebsocketConsumer`` run by ``DeliveredConsumer``: frames go out as WebSocket frames,
    written at once by the production server when the socket takes them (``x-direct-send-text``)."""

    def make_sender(self, send: Any, scope: dict[str, Any]) -> Sender:
        extensions = scope.get("extensions") or {}
        return Sender(send, extensions.get(DIRECT_SEND_TEXT), extensions.get(DIRECT_WRITER))

    async def close(self, code: int | None = None, reason: str | None = None) -> None:
        await self.sender.close(code, reason)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        """Channels', without its ``aclose_old_connections()`` (the module's docstring says why)."""
        for group in self.groups:
            await self.channel_layer.group_discard(group, self.channel_name)
        await self.disconnect(message["code"])
        raise StopConsumer


class DeliveredHttpConsumer(DeliveredConsumer, AsyncHttpConsumer):
    """An ``AsyncHttpConsumer`` run by ``DeliveredConsumer``, for a response that streams (``echo.sse``).

    ``handle`` is called once the request's body is in and, unlike Channels' own, the consumer does not
    stop when it returns: it runs until the client goes (``http.disconnect``), which is also what the
    servers send once the response is complete.
    """

    async def http_request(self, message: dict[str, Any]) -> None:
        if "body" in message:
            self.body.append(message["body"])
        if not message.get("more_body"):
            await self.handle(b"".join(self.body))

    async def http_disconnect(self, message: dict[str, Any]) -> None:
        await self.disconnect()
        raise StopConsumer


class FlatProtocolTypeRouter(ProtocolTypeRouter):
    """Channels' ``ProtocolTypeRouter`` that returns the chosen application's coroutine rather than
    awaiting it in a coroutine of its own: one suspended frame fewer for every connection's life.

    ``__call__`` is marked as a coroutine function: the servers (uvicorn's ``interface="auto"``,
    daphne's ``guarantee_single_callable``) tell an ASGI 3 application by that.
    """

    @markcoroutinefunction
    def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[None]:
        application = self.application_mapping.get(scope["type"])
        if application is None:
            raise ValueError(f"No application configured for scope type {scope['type']!r}")
        return application(scope, receive, send)


class FlatURLRouter(URLRouter):
    """Channels' ``URLRouter`` that returns the matched application's coroutine rather than awaiting it
    in a coroutine of its own: one suspended frame fewer for every connection's life.

    The matching, the scope it passes on (a copy, with ``path_remaining`` and ``url_route``) and the
    errors are Channels'. One difference: a ``Resolver404`` that a nested router raises only once
    awaited escapes instead of trying the next route; nest ``FlatURLRouter``s, which raise it when called.
    """

    @markcoroutinefunction
    def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[None]:
        path = scope.get("path_remaining", scope.get("path"))
        if path is None:
            raise ValueError("No 'path' key in connection scope, cannot route URLs")
        if "path_remaining" not in scope:
            # The outermost router: the path must start with root_path, which is not matched.
            root_path = scope.get("root_path", "")
            if root_path and not path.startswith(root_path):
                raise ValueError(f"No route found for path {path!r}.")
            path = path[len(root_path) :]
        path = path.lstrip("/")  # as Django matches
        for route in self.routes:
            try:
                match = route.pattern.match(path)
                if match:
                    new_path, args, kwargs = match
                    kwargs.update(route.default_args)
                    outer = scope.get("url_route", {})
                    url_route = {
                        "args": outer.get("args", ()) + args,
                        "kwargs": {**outer.get("kwargs", {}), **kwargs},
                    }
                    return route.callback(
                        dict(scope, path_remaining=new_path, url_route=url_route), receive, send
                    )
            except Resolver404:
                pass
        if "path_remaining" in scope:
            raise Resolver404(f"No route found for path {path!r}.")
        raise ValueError(f"No route found for path {path!r}.")
