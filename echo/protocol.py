"""The wire format and the names both sides agree on: frames, topics, groups, layer event types.

The publisher (``echo.broadcast``) and the consumer (``echo.consumers``) both import this module and
nothing of each other. A data frame is encoded to JSON text exactly once, here, by the publisher; the
consumer relays that text to every client unchanged.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

# Every client receives every topic through this one group until clients can choose topics.
BROADCAST_GROUP = "echo.broadcast"

# Channel-layer event carrying one pre-encoded text frame; handled by ``EchoConsumer.relay_frame``.
RELAY_EVENT = "relay.frame"

# Channel-layer event the layer puts in a consumer's queue when that consumer fell too far behind.
OVERFLOW_EVENT = "layer.overflow"

TOPIC_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")

# A series name is shown in the page's legend; keep it short and printable.
SERIES_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_SERIES_PER_FRAME = 32


class FrameError(ValueError):
    """Raised when data cannot be put on the wire: a bad topic, series name or value."""


def validate_topic(topic: str) -> str:
    """Return ``topic`` if it is a valid topic name, else raise ``FrameError``."""
    if not isinstance(topic, str) or not TOPIC_PATTERN.match(topic):
        raise FrameError(
            f"invalid topic {topic!r}: use 1-48 characters of a-z, 0-9, '_' and '-', "
            "starting with a letter or digit"
        )
    return topic


def validate_values(values: Mapping[str, Any]) -> dict[str, float | int]:
    """Return ``values`` as a plain dict if every series name and number can go on the wire.

    Values must be finite real numbers (JSON has no NaN or infinity); booleans are refused.
    """
    if not isinstance(values, Mapping) or not values:
        raise FrameError("values must be a non-empty mapping of series name to number")
    if len(values) > MAX_SERIES_PER_FRAME:
        raise FrameError(f"at most {MAX_SERIES_PER_FRAME} series per frame, got {len(values)}")
    checked: dict[str, float | int] = {}
    for name, value in values.items():
        if not isinstance(name, str) or not SERIES_PATTERN.match(name):
            raise FrameError(f"invalid series name {name!r}: 1-64 of A-Z a-z 0-9 _ . : -")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FrameError(f"series {name!r}: {value!r} is not a number")
        if not math.isfinite(value):
            raise FrameError(f"series {name!r}: {value!r} is not a finite number")
        checked[name] = value
    return checked


def encode_data_frame(topic: str, seq: int, ts: float, values: Mapping[str, float | int]) -> str:
    """Encode one data frame as compact JSON text, the form every client receives.

    The caller validates ``topic`` and ``values`` first (``validate_topic``, ``validate_values``).
    """
    frame = {"type": "data", "topic": topic, "seq": seq, "ts": ts, "values": values}
    return json.dumps(frame, separators=(",", ":"), allow_nan=False)


def relay_event(text: str) -> dict[str, str]:
    """Wrap an encoded frame as the channel-layer event consumers relay unchanged."""
    return {"type": RELAY_EVENT, "text": text}
