from django.urls import path

from echo.api import topics
from echo.views import index

urlpatterns = [
    path("", index, name="index"),
    path("api/topics", topics, name="topics"),
]
