"""The app's WebSocket route, `/ws/echo/`: a project includes it in its ASGI router (`wsproject/asgi.py`)."""

from django.urls import path

from echo.consumers import EchoConsumer

websocket_urlpatterns = [
    path("ws/echo/", EchoConsumer.as_asgi()),
]
