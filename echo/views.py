"""The pages: the live page, and the example page of the client module; each renders its template."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def index(request: HttpRequest) -> HttpResponse:
    """Render the live page; everything dynamic happens in its static JavaScript."""
    return render(request, "echo/index.html")


def example(request: HttpRequest) -> HttpResponse:
    """Render the example page: the client module alone, listing the frames of ``?topics=``."""
    return render(request, "echo/example.html")
