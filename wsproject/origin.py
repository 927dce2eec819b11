"""Origin checking for WebSocket handshakes.

Browsers always send ``Origin`` on a WebSocket handshake, so a foreign Origin is how a page on another
site would ride on a visitor's browser (cross-site WebSocket hijacking): those handshakes are refused
by Channels' ``AllowedHostsOriginValidator``, which accepts only origins whose host is in
``ALLOWED_HOSTS``. Two cases are decided here, by settings:

* no ``Origin`` header at all: not a browser page (command-line clients, other servers), so it cannot
  be used for that attack; let through unless ``WS_REQUIRE_ORIGIN`` is on;
* ``Origin: null``: a page opened from a ``file://`` URL, such as the original tutorial's page; let
  through only when ``WS_ALLOW_NULL_ORIGIN`` is on, which it is by default only with ``DEBUG``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from channels.security.websocket import AllowedHostsOriginValidator
from django.conf import settings

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def browser_origin_validator(application: ASGIApp) -> ASGIApp:
    """Wrap ``application`` so that browser pages must come from an allowed host."""
    validated = AllowedHostsOriginValidator(application)
    require_origin: bool = settings.WS_REQUIRE_ORIGIN
    allow_null: bool = settings.WS_ALLOW_NULL_ORIGIN

    def app(scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[None]:
        # Returns the chosen app's coroutine rather than awaiting it: one suspended frame fewer held
        # for every connection's whole life.
        origin = next((value for name, value in scope.get("headers", ()) if name == b"origin"), None)
        if (origin is None and not require_origin) or (origin == b"null" and allow_null):
            return application(scope, receive, send)
        return validated(scope, receive, send)

    return app
