"""The app's settings, each with a default: a project that adds ``echo`` sets only what it changes.

Read at use, not import, so tests and ``override_settings`` see changes. README: Configuration.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

DEFAULTS: dict[str, Any] = {
    # Frames replayed per topic on connect when the client does not say (?history=N).
    "WS_HISTORY_DEFAULT": 600,
    # Seconds after which a server process that stopped refreshing its presence counts is ignored.
    "WS_PRESENCE_TTL": 15,
    # Limits that keep one client from hurting the others.
    "WS_MAX_FRAME_BYTES": 64 * 1024,
    "WS_RATE_LIMIT": 1000,
    "WS_RATE_BURST": 1000,
    "WS_RATE_STRIKES": 5000,
    "WS_MAX_CONNECTIONS_PER_ADDRESS": 100,
    # Who may read which topic (echo.access): the first matching pattern decides; no match, refused.
    "WS_TOPIC_ACCESS": {"user-{user_id}": "owner", "user-*": "nobody", "*": "public"},
    # Seconds a connection token from POST /api/token is valid for.
    "WS_TOKEN_TTL": 300,
    # Publish API (echo.publishing.http_api): largest request body, and messages per second per key.
    "API_MAX_BODY_BYTES": 256 * 1024,
    "API_RATE_LIMIT": 1000,
}


class AppSettings:
    """``app_settings.WS_RATE_LIMIT``: the project's setting if it has one, else the default."""

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"echo has no setting {name!r}")
        return getattr(settings, name, DEFAULTS[name])


app_settings = AppSettings()
