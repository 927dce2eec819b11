"""HTTP endpoints for programs (and the page's topic picker): which topics exist."""

from __future__ import annotations

from channels.layers import get_channel_layer
from django.http import HttpRequest, JsonResponse
from redis.exceptions import RedisError

from echo.capabilities import capabilities
from echo.protocol import GROUP_PREFIX, group_topic


async def topics(request: HttpRequest) -> JsonResponse:
    """List the topics published to recently (those with history), with each one's latest ``seq``.

    ``{"topics": [{"name": "prices", "seq": 1041}, ...]}``, sorted by name; 503 if Redis is away. On a
    channel layer that keeps no history, no topic is known: an empty list.
    """
    layer = get_channel_layer()
    if not capabilities(layer).numbered:
        return JsonResponse({"topics": []})
    try:
        groups = await layer.numbered_groups()
    except (RedisError, OSError) as exc:
        return JsonResponse({"error": f"Redis unreachable: {type(exc).__name__}"}, status=503)
    listed = sorted(
        ({"name": group_topic(group), "seq": seq} for group, seq in groups if group.startswith(GROUP_PREFIX)),
        key=lambda topic: topic["name"],
    )
    return JsonResponse({"topics": listed})
