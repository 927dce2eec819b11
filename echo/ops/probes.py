"""``/healthz`` and ``/metrics``: answered in ASGI before Django, for load balancers and scrapers.

Wrapping the application also starts this process's reports to the admin's live view (``echo.ops.live``).

They sit in front of Django on purpose: a probe must work whatever ``Host`` header the prober sends
(``ALLOWED_HOSTS`` would refuse 127.0.0.1 in production) and must not cost a request cycle.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from channels.layers import get_channel_layer
from redis.exceptions import RedisError

from echo.layer.capabilities import capabilities
from echo.ops import live, metrics
from echo.ws import connections

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
PING_TIMEOUT = 2.0


async def health() -> tuple[int, dict[str, Any]]:
    """200 if this process reaches Redis through the channel layer, else 503 with the reason."""
    layer = get_channel_layer()
    # This project's layer pings Redis; another layer is asked to do what it does, a group send.
    shared = capabilities(layer).shared_state
    reach = layer.ping() if shared else layer.group_send("healthz", {"type": "healthz"})
    try:
        await asyncio.wait_for(reach, PING_TIMEOUT)
    except (RedisError, OSError, TimeoutError) as exc:
        reason = f"Redis unreachable through the channel layer: {type(exc).__name__}: {exc}".rstrip(": ")
        return 503, {"status": "unavailable", "reason": reason}
    return 200, {"status": "ok", "connections": connections.count()}


def readings() -> list[metrics.Reading]:
    """This process's gauges: connections open now, and the channel layer's counts since it started."""
    layer = get_channel_layer()
    open_now = "WebSocket and event-stream connections open now"
    values = [metrics.Reading("ws_connections_open", open_now, connections.count())]
    if capabilities(layer).shared_state:
        for name, value in layer.stats.as_dict().items():
            help_text = f"Channel layer: {name.replace('_', ' ')} (since start)"
            values.append(metrics.Reading(f"layer_{name}", help_text, value, since_start=True))
    return values


def with_probes(django_app: ASGIApp) -> ASGIApp:
    """Wrap the HTTP application so that the two probe paths are answered here."""
    # Made now, in the thread that serves: with several workers, readings() also runs on the
    # metrics thread, which must not be the one to create the layer.
    layer = get_channel_layer()
    exporter = metrics.exporter(readings)
    live.start_reporting(layer)  # this process, in the admin's live view

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path")
        if path == "/healthz":
            status, body = await health()
            await respond(send, status, json.dumps(body).encode(), b"application/json")
        elif path == "/metrics":
            await respond(send, 200, exporter.render(), metrics.CONTENT_TYPE.encode())
        else:
            await django_app(scope, receive, send)

    return app


async def respond(send: Any, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"cache-control", b"no-store")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
