"""The admin's live view: the page at ``/admin/live/`` and the JSON it polls, for staff only.

The project mounts them (``wsproject/urls.py``): the page through ``admin.site.admin_view`` (others are
sent to the admin's login), the JSON with its own check (others get 403). The numbers come from
``echo.ops.live``; the page (``echo/static/echo/admin-live.js``) asks for them every second.
"""

from __future__ import annotations

from channels.layers import get_channel_layer
from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.template.response import TemplateResponse
from django.views.decorators.http import require_GET
from redis.exceptions import RedisError

from echo.errors import UNAVAILABLE, api_error
from echo.layer.capabilities import capabilities
from echo.models import ApiKey
from echo.ops import live

POLL_MILLISECONDS = 1000

_meter = live.RateMeter()


def page(request: HttpRequest) -> TemplateResponse:
    """Called for ``/admin/live/`` (behind ``admin_view``: staff only): the page, which polls ``data``."""
    context = {
        **admin.site.each_context(request),
        "title": "Live",
        "poll_milliseconds": POLL_MILLISECONDS,
        "recent_seconds": int(live.RECENT_SECONDS),
    }
    return TemplateResponse(request, "admin/live.html", context)


@require_GET
async def data(request: HttpRequest) -> JsonResponse:
    """Called for ``/admin/live/data``: the snapshot as JSON; 403 unless an active staff user asks, 503
    without Redis or on a layer that keeps nothing to show."""
    user = await request.auser()
    if not (user.is_active and user.is_staff):
        return _no_store(api_error(403, "forbidden", "staff only"))
    layer = get_channel_layer()
    if not capabilities(layer).shared_state:
        name = type(layer).__name__
        detail = f"the channel layer {name} keeps no live state (use echo.layer.RedisFanoutChannelLayer)"
        return _no_store(api_error(503, UNAVAILABLE, detail))
    try:
        found = await live.snapshot(layer, _meter)
        use = found.pop("key_use")
        keys = [(name, digest) async for name, digest in ApiKey.objects.values_list("name", "digest")]
        await live.forget_keys(layer, set(use) - {digest for _, digest in keys})
    except (RedisError, OSError) as exc:
        detail = f"Redis unreachable: {type(exc).__name__}"
        return _no_store(api_error(503, UNAVAILABLE, detail))
    found["keys"] = [
        {"name": name, **use.get(digest, {"publishes": 0, "last_used": None})} for name, digest in keys
    ]
    return _no_store(JsonResponse(found))


def _no_store(response: JsonResponse) -> JsonResponse:
    response["Cache-Control"] = "no-store"
    return response
