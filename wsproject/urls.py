"""The project's URLs: Django's admin and login pages, and the echo app's page and API at the root."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    # Only logging in and out: users and passwords are managed in the admin and with manage.py.
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include("echo.urls")),
]
