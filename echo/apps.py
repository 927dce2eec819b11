from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core import checks
from django.core.exceptions import ImproperlyConfigured


class EchoConfig(AppConfig):
    name = "echo"
    verbose_name = "Echo and live data"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from echo.access import revocation

        checks.register(check_topic_access)
        checks.register(check_required_apps)
        revocation.connect_signals()


def check_required_apps(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Topic rules, tokens and API keys are about Django's users: say so, rather than fail on import."""
    from django.apps import apps

    missing = [
        app for app in ("django.contrib.auth", "django.contrib.contenttypes") if not apps.is_installed(app)
    ]
    return [checks.Error(f"echo needs {app} in INSTALLED_APPS", id="echo.E002") for app in missing]


def check_topic_access(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A mistake in WS_TOPIC_ACCESS stops every command at startup, not the first private connection."""
    from echo.access.rules import topic_access

    try:
        topic_access()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="echo.E001")]
    return []
