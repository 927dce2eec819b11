"""Origin checking for WebSocket handshakes and event streams (``/events/``).

Browsers always send ``Origin`` on a WebSocket handshake, so a foreign Origin is how a page on another
site would ride on a visitor's browser (cross-site WebSocket hijacking): those handshakes are refused
by Channels' ``AllowedHostsOriginValidator``, which accepts only origins whose host is in
``ALLOWED_HOSTS``. Two cases are decided here, by settings:

* no ``Origin`` header at all: not a browser page (command-line clients, other servers), so it cannot
  be used for that attack; let through unless ``WS_REQUIRE_ORIGIN`` is on;
* ``Origin: null``: a page opened from a ``file://`` URL, such as the original tutorial's page; let
  through only when ``WS_ALLOW_NULL_ORIGIN`` is on, which it is by default only with ``DEBUG``.

An event stream is an HTTP GET: a browser sends ``Origin`` with it only when the page is of another
origin (an ``EventSource`` across sites, which may carry the visitor's cookie with
``withCredentials``). The same decision applies; a refusal is an HTTP 403.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlparse

from channels.security.websocket import AllowedHostsOriginValidator, WebsocketDenier
from django.conf import settings

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
FORBIDDEN_BODY = b'{"error": "forbidden_origin", "detail": "this origin may not open event streams here"}'


def _origin(scope: dict[str, Any]) -> bytes | None:
    return next((value for name, value in scope.get("headers", ()) if name == b"origin"), None)


def _let_through(origin: bytes | None) -> bool:
    """True for the two cases decided here by settings (no Origin, ``null``); else Channels decides."""
    return (origin is None and not settings.WS_REQUIRE_ORIGIN) or (
        origin == b"null" and settings.WS_ALLOW_NULL_ORIGIN
    )


def _allowed(validator: AllowedHostsOriginValidator, scope: dict[str, Any]) -> bool:
    """The two cases above, else Channels' ``valid_origin`` (a host in ``ALLOWED_HOSTS``) decides; no
    Origin at all, once ``WS_REQUIRE_ORIGIN`` is on, is refused even where every host is allowed."""
    origin = _origin(scope)
    return _let_through(origin) or (
        origin is not None and validator.valid_origin(urlparse(origin.decode("latin1")))
    )


def browser_origin_validator(application: ASGIApp) -> ASGIApp:
    """Wrap ``application`` so that browser pages must come from an allowed host; others are refused
    as Channels' ``AllowedHostsOriginValidator`` refuses them (the handshake closed: HTTP 403)."""
    validator = AllowedHostsOriginValidator(application)  # its valid_origin decides

    def app(scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[None]:
        # Returns the chosen app's coroutine where Channels' validator awaits it: one suspended frame
        # fewer held for every connection's whole life.
        if _allowed(validator, scope):
            return application(scope, receive, send)
        return WebsocketDenier()(scope, receive, send)

    return app


def browser_origin_http_validator(application: ASGIApp) -> ASGIApp:
    """Wrap an HTTP ``application`` (an event stream) so that browser pages must come from an allowed
    host, as ``browser_origin_validator`` decides; others get a 403."""
    validator = AllowedHostsOriginValidator(application)

    def app(scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[None]:
        if _allowed(validator, scope):
            return application(scope, receive, send)
        return _forbidden(send)

    return app


async def _forbidden(send: Any) -> None:
    headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
    await send({"type": "http.response.start", "status": 403, "headers": headers})
    await send({"type": "http.response.body", "body": FORBIDDEN_BODY})
