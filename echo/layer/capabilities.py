"""What the configured channel layer can do, found once per layer and said once in the log.

Echo and live data work on any Channels layer with groups (plain ``group_send``). History, ``since``
recovery, numbered frames and presence need this project's layer (``echo.layer``), which offers
``group_history`` and friends; on another layer the consumer says so to clients that ask for them
(a ``warning`` frame, a ``reset`` for ``since``) instead of failing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Capabilities:
    numbered: bool  # numbered frames, history and since recovery (group_send_numbered, group_history)
    presence: bool  # viewer counts shared through Redis
    attach: bool  # consumers called back without a task waiting in receive() (echo.ws.delivery)


_known: dict[int, Capabilities] = {}


def capabilities(layer: Any) -> Capabilities:
    """What ``layer`` offers; the first time a layer is seen, one log line if it lacks something."""
    found = _known.get(id(layer))
    if found is None:
        # The class, not the instance: channels-redis' pub/sub layer answers attribute lookups
        # through a per-event-loop layer, which needs a running loop.
        kind = type(layer)
        found = Capabilities(
            numbered="numbered" in getattr(kind, "extensions", ()),
            presence=hasattr(kind, "group_send_local") and hasattr(kind, "redis"),
            attach=hasattr(kind, "attach") and hasattr(kind, "receive_nowait_all"),
        )
        _known[id(layer)] = found
        if not found.numbered:
            logger.warning(
                "Channel layer %s keeps no history: live data and echo work, but frames carry no "
                "position, 'history' gets a warning frame, 'since' a reset, and presence is off",
                type(layer).__name__,
            )
    return found
