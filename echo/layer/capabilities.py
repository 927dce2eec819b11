"""What a channel layer can do: decided once per layer class, from its ``extensions``, and said once.

Echo and live data work on any Channels layer with groups (plain ``group_send``). The rest needs a
layer that says it offers more in its ``extensions`` list, as Channels' layers say ``"groups"`` and
``"flush"``; this project's layer (``echo.layer.RedisFanoutChannelLayer``) offers all of them:

* ``numbered``: numbered frames, history and ``since`` recovery (``group_send_numbered``,
  ``group_history``, ``numbered_groups``, ``history_length``);
* ``shared_state``: a Redis client and key names for features that keep state beside the layer
  (presence, the API keys' rate limit, the live view: ``redis()``, ``group_key``, ``prefix``,
  ``group_send_local``, ``ping``, ``stats``, ``target``);
* ``attach``: consumers called back without a task waiting in ``receive`` (``attach``, ``pace``,
  ``receive_nowait_all``, ``forget_channel``; ``echo.ws.delivery``).

On another layer the consumer says so to clients that ask for what is missing (a ``warning`` frame, a
``reset`` for ``since``) instead of failing, and the features that need shared state are off.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

NUMBERED, SHARED_STATE, ATTACH = "numbered", "shared_state", "attach"


@dataclass(frozen=True)
class Capabilities:
    numbered: bool
    shared_state: bool
    attach: bool

    @property
    def presence(self) -> bool:
        """Viewer counts shared across processes: kept in the layer's Redis."""
        return self.shared_state


_known: dict[type, Capabilities] = {}


def capabilities(layer: Any) -> Capabilities:
    """What ``layer`` offers; the first time a layer class is seen, one log line if it lacks something."""
    # The class, not the instance: channels-redis' pub/sub layer answers attribute lookups through a
    # per-event-loop layer, which needs a running loop.
    kind = type(layer)
    found = _known.get(kind)
    if found is None:
        offered = set(getattr(kind, "extensions", ()))
        found = _known[kind] = Capabilities(NUMBERED in offered, SHARED_STATE in offered, ATTACH in offered)
        if not found.numbered:
            logger.warning(
                "Channel layer %s keeps no history: live data and echo work, but frames carry no "
                "position, 'history' gets a warning frame, 'since' a reset, and presence is off",
                kind.__name__,
            )
    return found
