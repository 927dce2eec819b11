"""The project's URLs: Django's admin (with echo's live view) and login pages, and the echo app's page
and API at the root."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from echo.ops import live_views

urlpatterns = [
    # Before the admin's own URLs, which would answer 404 for them. Staff only, both.
    path("admin/live/", admin.site.admin_view(live_views.page), name="admin-live"),
    path("admin/live/data", live_views.data, name="admin-live-data"),
    path("admin/", admin.site.urls),
    # Only logging in and out: users and passwords are managed in the admin and with manage.py.
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include("echo.urls")),
]
