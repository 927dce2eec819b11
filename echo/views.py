"""The page: the only HTTP view, rendering the client that connects to the WebSocket."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def index(request: HttpRequest) -> HttpResponse:
    """Render the live page; everything dynamic happens in its static JavaScript."""
    return render(request, "echo/index.html")
