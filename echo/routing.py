"""WebSocket URL routes: ``/ws/echo/``, and ``/`` for the original tutorial's page, which uses the root."""

from django.urls import path

from echo.consumers import EchoConsumer

websocket_urlpatterns = [
    path("ws/echo/", EchoConsumer.as_asgi()),
    path("", EchoConsumer.as_asgi()),
]
