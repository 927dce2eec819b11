from django.urls import path

from echo.views import index

urlpatterns = [
    path("", index, name="index"),
]
