"""The app's settings: each one's default and how it is read from the environment, in one place.

A project that adds ``echo`` sets only what it changes, in its settings module; this project's
``wsproject/settings.py`` takes them from the environment with ``from_environment``. Read at use, not
import, so tests and ``override_settings`` see changes. The table of variables: docs/operations.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def _whole_number(raw: str) -> int:
    return int(raw)


def _json_object(raw: str) -> dict[str, Any]:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


# name -> (default, how its environment variable of the same name is read)
SETTINGS: dict[str, tuple[Any, Callable[[str], Any]]] = {
    # Frames replayed per topic on connect when the client does not say (?history=N): 60 s at 10 Hz.
    "WS_HISTORY_DEFAULT": (600, _whole_number),
    # Seconds after which a server process that stopped refreshing its presence counts is ignored.
    "WS_PRESENCE_TTL": (15, _whole_number),
    # Limits that keep one client from hurting the others: the largest frame (1009 past it), frames
    # per second (more are not echoed; 0: off), the burst, and the strikes within 10 s before 1008.
    "WS_MAX_FRAME_BYTES": (64 * 1024, _whole_number),
    "WS_RATE_LIMIT": (1000, _whole_number),
    "WS_RATE_BURST": (1000, _whole_number),
    "WS_RATE_STRIKES": (5000, _whole_number),
    # Per client address (IPv6: per /64) and server process; loopback addresses are exempt.
    "WS_MAX_CONNECTIONS_PER_ADDRESS": (100, _whole_number),
    # Who may read which topic (echo.access.rules): the first matching pattern decides; none, refused.
    "WS_TOPIC_ACCESS": ({"user-{user_id}": "owner", "user-*": "nobody", "*": "public"}, _json_object),
    # Seconds a connection token from POST /api/token is valid for.
    "WS_TOKEN_TTL": (300, _whole_number),
    # The HTTP publish API (echo.publishing.http_api): largest body (else 413), messages per second
    # per API key (else 429).
    "API_MAX_BODY_BYTES": (256 * 1024, _whole_number),
    "API_RATE_LIMIT": (1000, _whole_number),
    # A JSON event's data, encoded, in UTF-8 bytes (echo.protocol.encode_event_data): past it publish()
    # raises FrameError and the HTTP API answers 400. History keeps HISTORY_LENGTH frames per topic, so
    # this also bounds a topic's Redis memory: 5000 x 64 KB is 320 MB at worst.
    "MESSAGE_MAX_BYTES": (64 * 1024, _whole_number),
}
DEFAULTS = {name: default for name, (default, _) in SETTINGS.items()}


def from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings of ``SETTINGS`` that ``environ`` sets (non-empty), parsed; a bad value is one
    ``ImproperlyConfigured`` line naming the variable."""
    found = {}
    for name, (_, parse) in SETTINGS.items():
        raw = environ.get(name, "").strip()
        if not raw:
            continue
        try:
            found[name] = parse(raw)
        except ValueError as exc:
            kind = "a JSON object" if parse is _json_object else "a whole number"
            raise ImproperlyConfigured(f"{name}={raw[:40]!r}: expected {kind} ({exc})") from None
    return found


class AppSettings:
    """``app_settings.WS_RATE_LIMIT``: the project's setting if it has one, else the default."""

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"echo has no setting {name!r}")
        return getattr(settings, name, DEFAULTS[name])


app_settings = AppSettings()
