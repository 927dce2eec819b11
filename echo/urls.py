"""The app's HTTP routes: the page, the topics and token APIs, and the publish API.

A project includes them (``wsproject/urls.py``)."""

from django.urls import path

from echo.api import token, topics
from echo.live_views import counting_publishes
from echo.publish_api import publish, publish_batch
from echo.views import index

app_name = "echo"

urlpatterns = [
    path("", index, name="index"),
    path("api/topics", topics, name="topics"),
    # Counted per key for the admin's live view (echo.live).
    path("api/publish", counting_publishes(publish_batch), name="publish-batch"),
    path("api/publish/<publish_topic:topic>", counting_publishes(publish), name="publish"),
    path("api/token", token, name="token"),
]
