"""The app's HTTP routes: the pages, the topics and token APIs, and the publish API.

A project includes them (``wsproject/urls.py``)."""

from django.urls import path

from echo.access.views import token, topics
from echo.publishing.http_api import publish, publish_batch
from echo.views import example, index

app_name = "echo"

urlpatterns = [
    path("", index, name="index"),
    path("example/", example, name="example"),
    path("api/topics", topics, name="topics"),
    path("api/publish", publish_batch, name="publish-batch"),
    path("api/publish/<publish_topic:topic>", publish, name="publish"),
    path("api/token", token, name="token"),
]
