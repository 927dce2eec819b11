"""ASGI entry point: Django for HTTP, the echo consumer for WebSockets, the event stream at /events/;
every socket and stream origin-checked."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wsproject.settings")

# Build the Django HTTP app first: it sets Django up, which the imports below rely on.
django_asgi_app = get_asgi_application()

from django.urls import path, re_path  # noqa: E402

from echo.consumers import EchoConsumer  # noqa: E402
from echo.ops.probes import with_probes  # noqa: E402
from echo.routing import websocket_urlpatterns  # noqa: E402
from echo.sse import EventStreamConsumer  # noqa: E402
from echo.ws.runtime import FlatProtocolTypeRouter, FlatURLRouter  # noqa: E402
from wsproject.origin import browser_origin_http_validator, browser_origin_validator  # noqa: E402

# The app's /ws/echo/, and the site root for the original tutorial's page, which connects there.
websocket_routes = [*websocket_urlpatterns, path("", EchoConsumer.as_asgi())]

# Server-Sent Events, origin-checked as sockets are; everything else is Django's.
event_stream_routes = [path("events/", browser_origin_http_validator(EventStreamConsumer.as_asgi()))]

application = FlatProtocolTypeRouter(
    {
        "http": with_probes(FlatURLRouter([*event_stream_routes, re_path("", django_asgi_app)])),
        "websocket": browser_origin_validator(FlatURLRouter(websocket_routes)),
    }
)
