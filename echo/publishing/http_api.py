"""The HTTP publish API: programs that are not Django publish with an API key (``echo.access.apikeys``).

``POST /api/publish/<topic>``: the body is one message, what one line of ``push_data --source stdin``
takes: a JSON event ``{"event": NAME, "data": ANY}``, or values (a JSON object of numbers, or one
number for series ``value``); answers ``{"topic", "epoch", "seq"}``. ``POST /api/publish``:
``{"messages": [{"topic", "values"} or {"topic", "event", "data"}, ...]}``, at most ``MAX_BATCH``,
validated as a whole (an event's data within its limits too) before any is published; answers
``{"published": [{"topic", "epoch", "seq"}, ...]}`` in order. Both publish through
``echo.publishing.broadcast.apublish``: the numbering, history and delivery of ``push_data``.

A request may carry an ``Idempotency-Key`` header (1 to ``MAX_IDEMPOTENCY_HEADER`` printable ASCII
characters, no spaces): the same request sent again with the same key and the same API key within
``echo.layer.history.IDEMPOTENCY_SECONDS`` publishes nothing new and answers the first one's positions, so a
client whose request timed out can retry it safely.

A refusal is an ``ApiError`` raised anywhere below and turned into ``{"error", "detail"}`` JSON in one
place (``_answer``). The key is read from its header and never written into an answer or a log line;
Django logs a refused request's method and path only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from channels.layers import get_channel_layer
from django.http import HttpRequest, JsonResponse
from django.urls import register_converter
from django.views.decorators.csrf import csrf_exempt
from redis.exceptions import RedisError

from echo.access.apikeys import KeyRateLimit, authenticate_key, bearer_key, publish_grant
from echo.access.patterns import matches_any
from echo.conf import app_settings
from echo.errors import UNAVAILABLE, api_error
from echo.layer.history import valid_idempotency_key
from echo.models import ApiKey
from echo.ops import live
from echo.protocol import (
    BadEvent,
    Event,
    FrameError,
    Position,
    encode_event_data,
    parse_message,
    validate_event,
    validate_topic,
    validate_values,
)
from echo.publishing.broadcast import LayerNotShared, apublish

MAX_BATCH = 1000
MAX_IDEMPOTENCY_HEADER = 100
VALUES_FIELDS = frozenset({"topic", "values"})
EVENT_FIELDS = frozenset({"topic", "event", "data"})

_rate_limit = KeyRateLimit()


class AnyTopicText:
    """URL converter for ``<publish_topic:topic>``: all of the path after ``/api/publish/``, even empty
    or with a line break (which ``<path:...>`` refuses), so that a bad topic gets the API's JSON 400,
    not Django's HTML 404. ``validate_topic`` decides."""

    regex = r"[\s\S]*"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(AnyTopicText, "publish_topic")


class ApiError(Exception):
    """A request the API refuses: its HTTP status, a short machine-readable code and a one-line detail."""

    def __init__(self, status: int, code: str, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})


# A message checked for publishing: its topic, and its values or its JSON event.
Message = tuple[str, dict[str, float | int] | Event]


@csrf_exempt  # a bearer key authenticates, never a cookie: nothing for a forged form to borrow
async def publish(request: HttpRequest, topic: str) -> JsonResponse:
    """Called for ``POST /api/publish/<topic>``: publish one message; its position, or an error."""
    return await _answer(request, lambda body: [(_topic(topic), _stdin_message(body))], batch=False)


@csrf_exempt
async def publish_batch(request: HttpRequest) -> JsonResponse:
    """Called for ``POST /api/publish``: publish a batch in order; their positions, or an error."""
    return await _answer(request, lambda body: _batch(_json(body)), batch=True)


async def _answer(
    request: HttpRequest, parse: Callable[[bytes], list[Message]], *, batch: bool
) -> JsonResponse:
    """Run a publish request through every check, in order, and turn a refusal into its JSON answer.

    Order: method (405), key (401), size (413), body and topics (400), the key's topics (403), its
    rate (429), then publish (503 if Redis is away). Nothing is published unless every message passed.
    """
    try:
        if request.method != "POST":
            raise ApiError(405, "method_not_allowed", "use POST", {"Allow": "POST"})
        key = await _authenticate(request)
        messages = parse(_read_body(request))
        idempotency = _idempotency(request, key)
        _check_topics(key, messages)
        await _check_rate(key, len(messages))
        positions = await _publish_all(messages, idempotency)
    except ApiError as refused:
        live.record_publish_refused(refused.code)
        return api_error(refused.status, refused.code, refused.detail, refused.headers)
    live.record_publish(key.digest, len(messages))
    published = [_position(topic, position) for (topic, _), position in zip(messages, positions, strict=True)]
    return JsonResponse({"published": published} if batch else published[0])


async def _authenticate(request: HttpRequest) -> ApiKey:
    key = bearer_key(request)
    if key is None:
        raise ApiError(401, "unauthorized", "send an API key as 'Authorization: Bearer <key>'")
    found = await authenticate_key(key)
    if found is None:
        raise ApiError(401, "unauthorized", "unknown or revoked API key")
    return found


def _read_body(request: HttpRequest) -> bytes:
    """The request body, refused with 413 past ``API_MAX_BODY_BYTES``: by Content-Length, then as read.

    Django's ASGI handler has spooled the body already (to disk past FILE_UPLOAD_MAX_MEMORY_SIZE);
    at most the limit and one byte of it are read here, whatever its size.
    """
    limit = app_settings.API_MAX_BODY_BYTES
    too_large = ApiError(413, "too_large", f"the body is over {limit} bytes")
    declared = request.META.get("CONTENT_LENGTH") or ""
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = request.read(limit + 1)
    if len(body) > limit:
        raise too_large
    return bytes(body)


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "bad_json", "the body is not UTF-8 text") from None


def _json(body: bytes) -> Any:
    try:
        return json.loads(_text(body))
    except (ValueError, RecursionError) as exc:  # also integers of over 4300 digits, and deep nesting
        raise ApiError(400, "bad_json", f"the body is not JSON: {_one_line(exc)}") from None


def _stdin_message(body: bytes) -> dict[str, float | int] | Event:
    """The message of a single publish: exactly what ``push_data --source stdin`` takes as one line."""
    text = _text(body)
    try:
        message = parse_message(text)
    except BadEvent as exc:
        raise ApiError(400, "bad_event", _one_line(exc)) from None
    except (ValueError, OverflowError, RecursionError) as exc:  # BadValues is a FrameError, a ValueError
        _json(body)  # not JSON at all: say so (bad_json) rather than what parse_message said
        raise ApiError(400, "bad_values", _one_line(exc)) from None
    if isinstance(message, Event):
        return _checked_event(message.name, message.data)
    try:
        return validate_values(message)
    except (FrameError, OverflowError) as exc:
        raise ApiError(400, "bad_values", _one_line(exc)) from None


def _checked_event(name: Any, data: Any, where: str = "") -> Event:
    """An event whose name and data will go on the wire (checked again, cheaply, when published)."""
    try:
        validate_event(name)
    except FrameError as exc:
        raise ApiError(400, "bad_event", where + _one_line(exc)) from None
    try:
        encode_event_data(data, app_settings.MESSAGE_MAX_BYTES)
    except FrameError as exc:
        raise ApiError(400, "bad_data", where + _one_line(exc)) from None
    return Event(name, data)


def _topic(topic: Any, where: str = "") -> str:
    try:
        return validate_topic(topic)
    except FrameError as exc:
        raise ApiError(400, "bad_topic", where + _one_line(exc)) from None


def _batch(document: Any) -> list[Message]:
    """The messages of a batch body, each checked; the first bad one refuses the whole batch (400)."""
    expected = '{"topic": ..., "values": {...}} or {"topic": ..., "event": ..., "data": ...}'
    if not isinstance(document, dict) or set(document) != {"messages"}:
        raise ApiError(400, "bad_batch", 'expected {"messages": [' + expected + ", ...]}")
    items = document["messages"]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
        raise ApiError(400, "bad_batch", f"'messages' must be a list of 1 to {MAX_BATCH} messages")
    messages: list[Message] = []
    for index, item in enumerate(items):
        where = f"messages[{index}]: "
        if not isinstance(item, dict) or set(item) not in (VALUES_FIELDS, EVENT_FIELDS):
            raise ApiError(400, "bad_batch", where + "expected " + expected)
        topic = _topic(item["topic"], where)
        if "event" in item:
            messages.append((topic, _checked_event(item["event"], item["data"], where)))
            continue
        try:
            values = validate_values(item["values"])
        except (FrameError, OverflowError) as exc:
            raise ApiError(400, "bad_values", where + _one_line(exc)) from None
        messages.append((topic, values))
    return messages


def _check_topics(key: ApiKey, messages: list[Message]) -> None:
    patterns = publish_grant(key)
    for topic, _ in messages:
        if not matches_any(topic, patterns):
            raise ApiError(403, "forbidden", f"this API key may not publish to {topic!r}")


async def _check_rate(key: ApiKey, messages: int) -> None:
    try:
        decision = await _rate_limit.check(get_channel_layer(), key, messages, app_settings.API_RATE_LIMIT)
    except (RedisError, OSError) as exc:
        raise _unavailable(exc) from None
    if not decision.allowed:
        raise ApiError(
            429,
            "rate_limited",
            f"over {app_settings.API_RATE_LIMIT} messages per second for this key",
            {"Retry-After": str(decision.retry_after)},
        )


def _idempotency(request: HttpRequest, key: ApiKey) -> str | None:
    """The request's ``Idempotency-Key``, scoped to its API key (another key's retries are its own)."""
    header = request.headers.get("Idempotency-Key")
    if header is None:
        return None
    if not valid_idempotency_key(header) or len(header) > MAX_IDEMPOTENCY_HEADER:
        detail = f"Idempotency-Key is 1 to {MAX_IDEMPOTENCY_HEADER} printable ASCII characters, no spaces"
        raise ApiError(400, "bad_idempotency_key", detail)
    return f"k{key.pk}.{header}"


async def _publish_all(messages: list[Message], idempotency: str | None = None) -> list[Position]:
    """Publish in order, one at a time, so that a batch's messages to one topic keep their order.

    With an idempotency key, message ``n`` of the request carries ``key.n``: a retried batch
    publishes only what the first attempt did not.
    """
    positions: list[Position] = []
    try:
        for index, (topic, message) in enumerate(messages):
            message_key = None if idempotency is None else f"{idempotency}.{index}"
            if isinstance(message, Event):
                positions.append(await apublish(topic, message.data, message_key, event=message.name))
            else:
                positions.append(await apublish(topic, message, message_key))
    except LayerNotShared as exc:
        raise ApiError(503, UNAVAILABLE, _one_line(exc)) from None
    except (RedisError, OSError) as exc:
        error = _unavailable(exc)
        if positions:
            error.detail += f" (the first {len(positions)} of {len(messages)} messages were published)"
        raise error from None
    return positions


def _unavailable(exc: BaseException) -> ApiError:
    return ApiError(503, UNAVAILABLE, f"Redis unreachable: {type(exc).__name__}", {"Retry-After": "1"})


def _position(topic: str, position: Position) -> dict[str, Any]:
    return {"topic": topic, "epoch": position.epoch, "seq": position.seq}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
