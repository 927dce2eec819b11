"""Django admin for the app's API keys: list and revoke them (make them with ``manage.py api_key``)."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from echo.models import ApiKey


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "publish_topics", "read_topics", "created"]
    readonly_fields = ["name", "publish_topics", "read_topics", "created"]
    search_fields = ["name"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # A key is shown once, when made: `manage.py api_key create` prints it; the admin could not.
        return False
