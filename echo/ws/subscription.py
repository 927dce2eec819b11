"""What a client asks for in its URL: ``?topics=a,b&history=N&since=a:41:3f9a2c1b&max_rate=5``.

The WebSocket's and the event stream's (``/events/``, whose ``Last-Event-ID`` header is a ``since``).

Everything here comes from an untrusted client, so every value is checked against a strict pattern
before it names a group or reaches Redis; a bad value raises ``ClientError`` with a code the client can
act on.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import parse_qs

from echo.errors import ClientError
from echo.protocol import DEFAULT_TOPIC, EPOCH_PATTERN, MAX_TOPICS_PER_CONNECTION, TOPIC_PATTERN, Position

MAX_QUERY_BYTES = 4096
DIGITS = re.compile(r"[0-9]+")  # str.isdigit() would also accept "²" and other non-ASCII digits
RATE = re.compile(r"[0-9]{1,4}(?:\.[0-9]{1,3})?")
MAX_RATE = 1000.0  # frames per second per topic: above this, conflation would not be asked for
MAX_SEQ = 2**53  # the largest integer every JSON client can hold exactly


# A client that has seen nothing yet (most of them): one empty mapping for all.
NO_POSITIONS: Mapping[str, Position] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Subscription:
    """The topics a client follows, how much history it wants, and where it stands in each it has seen.

    A ``since`` position without an epoch (the form before epochs existed) has epoch None: it cannot
    be checked, so the client gets a ``reset``.
    """

    topics: tuple[str, ...] = (DEFAULT_TOPIC,)
    history: int = 0
    since: Mapping[str, Position] = field(default_factory=lambda: NO_POSITIONS)
    max_rate: float | None = None  # live frames per second per topic, at most (echo.layer.conflation)


def parse_subscription(
    query_string: bytes, *, default_history: int, max_history: int, last_event_id: bytes | None = None
) -> Subscription:
    """Parse and check a URL's query string; raise ``ClientError`` for anything wrong.

    ``last_event_id`` (an event stream's ``Last-Event-ID``: where its browser reconnects from) is a
    ``since`` that wins over the URL's, which is the one the stream first started from.
    """
    if len(query_string) > MAX_QUERY_BYTES or len(last_event_id or b"") > MAX_QUERY_BYTES:
        raise ClientError("bad_query", f"query string longer than {MAX_QUERY_BYTES} bytes")
    try:
        params = parse_qs(query_string.decode("ascii"), keep_blank_values=True, max_num_fields=16)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ClientError("bad_query", f"unreadable query string: {exc}") from None
    for name in ("topics", "history", "since", "max_rate"):
        if len(params.get(name, ())) > 1:
            raise ClientError("bad_query", f"'{name}' given more than once")
    topics = _topics(params["topics"][0]) if "topics" in params else (DEFAULT_TOPIC,)
    history = _history(params["history"][0], max_history) if "history" in params else default_history
    since = _since(params["since"][0], topics) if "since" in params else NO_POSITIONS
    if last_event_id:
        try:
            since = _since(last_event_id.decode("ascii"), topics)
        except UnicodeDecodeError:
            raise ClientError("bad_since", "Last-Event-ID is not ASCII") from None
    max_rate = _max_rate(params["max_rate"][0]) if "max_rate" in params else None
    return Subscription(topics=topics, history=history, since=since, max_rate=max_rate)


def _max_rate(raw: str) -> float:
    rate = float(raw) if RATE.fullmatch(raw) else 0.0
    if not 0 < rate <= MAX_RATE:
        raise ClientError(
            "bad_max_rate", f"max_rate must be a number of frames per second, over 0 and at most {MAX_RATE:g}"
        )
    return rate


def _topics(raw: str) -> tuple[str, ...]:
    names = raw.split(",")
    for name in names:
        if not TOPIC_PATTERN.fullmatch(name):
            raise ClientError(
                "bad_topics",
                f"invalid topic {name[:60]!r}: 1-48 of a-z 0-9 _ -, starting with a letter or digit",
            )
    # Interned: thousands of connections to one topic hold one copy of its name.
    unique = tuple([sys.intern(name) for name in dict.fromkeys(names)])
    if len(unique) > MAX_TOPICS_PER_CONNECTION:
        raise ClientError(
            "too_many_topics", f"{len(unique)} topics; at most {MAX_TOPICS_PER_CONNECTION} per connection"
        )
    return unique


def _history(raw: str, max_history: int) -> int:
    if not DIGITS.fullmatch(raw) or len(raw) > 9:
        raise ClientError("bad_history", f"history must be a whole number from 0 to {max_history}")
    value = int(raw)
    if value > max_history:
        raise ClientError("bad_history", f"history {value} is more than the {max_history} kept")
    return value


def _since(raw: str, topics: tuple[str, ...]) -> dict[str, Position]:
    since: dict[str, Position] = {}
    for item in raw.split(","):
        topic, sep, position = item.partition(":")
        seq, _, epoch = position.partition(":")
        if (
            not sep
            or not TOPIC_PATTERN.fullmatch(topic)
            or not DIGITS.fullmatch(seq)
            or len(seq) > 16
            or (epoch and not EPOCH_PATTERN.fullmatch(epoch))
            or position.endswith(":")
        ):
            raise ClientError("bad_since", f"since takes topic:seq:epoch items, got {item[:60]!r}")
        if topic not in topics:
            raise ClientError("bad_since", f"since names {topic!r}, which is not among the topics")
        if int(seq) > MAX_SEQ:
            raise ClientError("bad_since", f"seq {seq} is out of range")
        since[topic] = Position(epoch or None, int(seq))
    return since
