"""The wire format and the names both sides agree on: frames, topics, groups, layer event types.

The publisher (``echo.publishing.broadcast``) and the consumer (``echo.consumers``) both import this
module and nothing of each other. A data frame is encoded to JSON text exactly once, here, by the
publisher; the consumer relays that text to every client unchanged.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping
from typing import Any, NamedTuple

# The topic a client gets when it names none: the one `push_data` publishes to by default.
DEFAULT_TOPIC = "prices"
MAX_TOPICS_PER_CONNECTION = 16

# Channel-layer event carrying one pre-encoded text frame, relayed unchanged by the consumer. A numbered
# one (a data frame) also carries its ``group``, ``epoch`` and ``seq``.
RELAY_EVENT = "relay.frame"

GROUP_PREFIX = "topic."

TOPIC_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,47}")  # use fullmatch: "$" would allow a trailing newline

# A stream's epoch: made by the numbering script (echo/layer/history.py) when a topic's counter is
# (re)created.
EPOCH_PATTERN = re.compile(r"[0-9a-z]{1,32}")

# A series name is shown in the page's legend; keep it short and printable.
SERIES_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
MAX_SERIES_PER_FRAME = 32

# A JSON event's name: shown in the page's log and table, and the prefix of its plotted series.
EVENT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
# A JSON event's data: arrays and objects nested at most this deep, and at most this many object keys in
# all, so that no client's parser (recursive ones included) pays much for one message. Its size, encoded,
# is a setting (MESSAGE_MAX_BYTES, echo/conf.py) the publisher passes to ``encode_event_data``.
MAX_DATA_DEPTH = 32
MAX_DATA_KEYS = 1000

# Presence frames of topics that need login list at most this many user names, then a count.
MAX_PRESENCE_USERS = 100


class Position(NamedTuple):
    """Where a frame stands in its topic's stream: ``seq`` counts from 1 within one ``epoch``.

    An epoch of None means "no stream": nothing seen yet, and nothing to continue.
    """

    epoch: str | None
    seq: int


class FrameError(ValueError):
    """Raised when data cannot be put on the wire: a bad topic, series name or value."""


def validate_topic(topic: str) -> str:
    """Return ``topic`` if it is a valid topic name, else raise ``FrameError``."""
    if not isinstance(topic, str) or not TOPIC_PATTERN.fullmatch(topic):
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
        if not isinstance(name, str) or not SERIES_PATTERN.fullmatch(name):
            raise FrameError(f"invalid series name {name!r}: 1-64 of A-Z a-z 0-9 _ . : -")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FrameError(f"series {name!r}: {value!r} is not a number")
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an integer too large for a float: no JSON client could read it
            finite = False
        if not finite:
            raise FrameError(f"series {name!r}: {str(value)[:40]} is not a finite number")
        checked[name] = value
    return checked


def validate_event(event: str) -> str:
    """Return ``event`` if it is a valid event name, else raise ``FrameError``."""
    if not isinstance(event, str) or not EVENT_PATTERN.fullmatch(event):
        raise FrameError(
            f"invalid event name {_shorten(repr(event))}: use 1-64 of A-Z a-z 0-9 _ . : -, "
            "starting with a letter or digit"
        )
    return event


def encode_event_data(data: Any, max_bytes: int) -> str:
    """Check a JSON event's ``data`` and return it as compact JSON text, its one encoding.

    Any JSON value: objects (string keys), lists (or tuples), strings, finite numbers, booleans, None.
    Refused with ``FrameError``: another type (convert a date or a Decimal first), NaN or infinity,
    nesting deeper than ``MAX_DATA_DEPTH``, more than ``MAX_DATA_KEYS`` keys in all, text that is not
    valid Unicode, or more than ``max_bytes`` bytes of UTF-8 once encoded.
    """
    _check_data(data)
    text = encode(data)
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: no JSON client could read it
        raise FrameError("data holds text that is not valid Unicode (a lone surrogate)") from None
    if size > max_bytes:
        raise FrameError(f"data is {size} bytes encoded, over the limit of {max_bytes} (MESSAGE_MAX_BYTES)")
    return text


def _check_data(data: Any) -> None:
    """Walk ``data`` without recursion, refusing what ``encode_event_data`` says it refuses."""
    keys = 0
    pending: list[tuple[Any, int, str]] = [(data, 0, "data")]
    while pending:
        value, depth, where = pending.pop()
        if isinstance(value, str | bool) or value is None:
            continue
        if isinstance(value, int | float):
            if not _finite(value):
                raise FrameError(f"{where}: {str(value)[:40]} is not a finite number")
            continue
        if not isinstance(value, dict | list | tuple):
            raise FrameError(f"{where}: {type(value).__name__} is not a JSON type (convert it first)")
        if depth >= MAX_DATA_DEPTH:
            raise FrameError(f"{where}: nested deeper than {MAX_DATA_DEPTH} levels")
        if isinstance(value, dict):
            keys += len(value)
            if keys > MAX_DATA_KEYS:
                raise FrameError(f"data has more than {MAX_DATA_KEYS} object keys in all")
            for name, item in value.items():
                if not isinstance(name, str):
                    raise FrameError(f"{where}: key {_shorten(repr(name))} is not a string")
                pending.append((item, depth + 1, f"{where}.{_shorten(name, 40)}"))
        else:
            pending.extend((item, depth + 1, f"{where}[{index}]") for index, item in enumerate(value))


def topic_group(topic: str) -> str:
    """The channel-layer group of a (validated) topic; interned, as every connection to it holds it."""
    return sys.intern(GROUP_PREFIX + topic)


def group_topic(group: str) -> str:
    """The topic of a channel-layer group made by ``topic_group``."""
    return group.removeprefix(GROUP_PREFIX)


def encode(frame: Mapping[str, Any]) -> str:
    """Encode any server frame as compact JSON text."""
    return json.dumps(frame, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def encode_data_frame_around_position(
    topic: str, ts: float, values: Mapping[str, float | int]
) -> tuple[str, str, str]:
    """Encode a data frame as the JSON text around its ``epoch`` and ``seq``, which Redis fills in.

    The frame is ``before + epoch + between + seq + after``. The caller validates ``topic`` and
    ``values`` first (``validate_topic``, ``validate_values``).
    """
    head = encode({"type": "data", "topic": topic, "epoch": "", "seq": 0})
    before, _, rest = head.partition('"epoch":"')
    before += '"epoch":"'
    between = rest[: -len("0}")]
    after = "," + encode({"ts": ts, "values": values})[1:]
    return before, between, after


def encode_event_frame_around_position(
    topic: str, ts: float, event: str, data_text: str
) -> tuple[str, str, str]:
    """Encode a JSON event's data frame around its ``epoch`` and ``seq``, as
    ``encode_data_frame_around_position`` does a frame of values, with ``"event"`` and ``"data"`` where
    that has ``"values"``. The caller validates ``event`` (``validate_event``); ``data_text`` is
    ``encode_event_data``'s answer, spliced in unchanged."""
    before, between, _ = encode_data_frame_around_position(topic, ts, {})
    return before, between, "," + encode({"ts": ts})[1:-1] + _event_fields(event, data_text)


def encode_data_frame(topic: str, ts: float, values: Mapping[str, float | int]) -> str:
    """Encode a data frame with no position, for a channel layer that does not number messages."""
    return encode({"type": "data", "topic": topic, "ts": ts, "values": values})


def encode_event_frame(topic: str, ts: float, event: str, data_text: str) -> str:
    """Encode a JSON event's data frame with no position, for a layer that does not number messages."""
    return encode({"type": "data", "topic": topic, "ts": ts})[:-1] + _event_fields(event, data_text)


def _event_fields(event: str, data_text: str) -> str:
    """The end of a JSON event's frame: ``,"event":...,"data":...}``."""
    return ',"event":' + json.dumps(event) + ',"data":' + data_text + "}"


def as_replay(text: str) -> str:
    """Mark an encoded data frame as replayed from history: ``"replay": true`` added at its end."""
    return text[:-1] + ',"replay":true}'


def reset_frame(topic: str, epoch: str | None, reason: str) -> str:
    """Tell a client its view of ``topic`` cannot be continued: clear it; frames of ``epoch`` follow.

    ``epoch`` is None when the topic has no stream right now: the next one starts at seq 1.
    """
    return encode({"type": "reset", "topic": topic, "epoch": epoch, "reason": reason})


def presence_frame(topic: str, count: int, users: list[str] | None = None, more_users: int = 0) -> str:
    """How many connections watch ``topic``; on a topic that needs login also who (``users``, sorted,
    at most ``MAX_PRESENCE_USERS``; ``more_users`` counts the names left out)."""
    frame: dict[str, Any] = {"type": "presence", "topic": topic, "count": count}
    if users is not None:
        frame["users"] = users
        frame["more_users"] = more_users
    return encode(frame)


def error_frame(code: str, detail: str) -> str:
    """The request or the client's behaviour was refused; a close follows."""
    return encode({"type": "error", "code": code, "detail": detail})


def warning_frame(code: str, detail: str) -> str:
    """Something the client asked for is not available here; the connection carries on without it."""
    return encode({"type": "warning", "code": code, "detail": detail})


def relay_event(text: str) -> dict[str, str]:
    """Wrap an encoded frame as the channel-layer event consumers relay unchanged."""
    return {"type": RELAY_EVENT, "text": text}


class BadValues(FrameError):
    """Raised for text that is not one number or one JSON object of numbers."""


class BadEvent(FrameError):
    """Raised for a JSON event that is not ``{"event": NAME, "data": ANY}`` with a valid name."""


class Event(NamedTuple):
    """One JSON event, as a line of ``push_data --source stdin`` or an HTTP publish body carries it."""

    name: str
    data: Any


def parse_message(line: str) -> dict[str, float] | Event:
    """Parse the text of one message, as a line of ``push_data --source stdin`` and the body of
    ``POST /api/publish/<topic>`` carry it: a JSON event ``{"event": NAME, "data": ANY}``, or values.

    An object whose ``event`` is a string is an event: values are numbers, so no values object ever
    looks like one (``{"event": 5}`` is still values, series ``event``). Raises ``BadEvent`` for an event
    with a bad name or other keys and ``BadValues`` as ``parse_values`` does; the data's limits are
    checked when it is encoded (``encode_event_data``).
    """
    parsed, text = _loads(line)
    if isinstance(parsed, dict) and isinstance(parsed.get("event"), str):
        if set(parsed) != {"event", "data"}:
            raise BadEvent('an event is {"event": NAME, "data": ANY}: both keys, and no other')
        try:
            return Event(validate_event(parsed["event"]), parsed["data"])
        except FrameError as exc:
            raise BadEvent(str(exc)) from None
    return _values_of(parsed, text)


def parse_values(line: str) -> dict[str, float]:
    """Parse the text of one message's values: a number (series ``value``) or a JSON object of series
    to numbers. Raises ``BadValues`` saying what is wrong; ``validate_values`` checks the rest."""
    parsed, text = _loads(line)
    return _values_of(parsed, text)


def _loads(line: str) -> tuple[Any, str]:
    text = line.strip()
    if not text:
        raise BadValues("empty line")
    try:
        return json.loads(text), text
    except (ValueError, RecursionError):  # also integers of over 4300 digits, and deep nesting
        raise BadValues(f"not a number or a JSON object: {_shorten(text)}") from None


def _values_of(parsed: Any, text: str) -> dict[str, float]:
    if isinstance(parsed, bool) or not isinstance(parsed, int | float | dict):
        raise BadValues(f"not a number or a JSON object: {_shorten(text)}")
    values = {"value": parsed} if isinstance(parsed, int | float) else parsed
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
            raise BadValues(f"series {name!r} is not a finite number: {_shorten(json.dumps(value))}")
    return values


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
