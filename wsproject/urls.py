"""The project's URLs: the echo app's page and API at the root."""

from django.urls import include, path

urlpatterns = [
    path("", include("echo.urls")),
]
