"""API keys: made, looked up and limited here, for programs that publish over HTTP or ask for a token.

A key is ``ek_`` and 43 random URL-safe characters, sent as ``Authorization: Bearer <key>``. Only its
SHA-256 digest is stored (``echo.models.ApiKey``), so the key is shown once, when made, and a copy of
the database reveals none. Each key has a rate limit, ``API_RATE_LIMIT`` messages per second, which
every server process shares through the channel layer's Redis (``KeyRateLimit``).
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
import weakref
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import validate_slug
from django.db import IntegrityError
from django.http import HttpRequest

from echo.access.patterns import PatternError, parse_list
from echo.layer.capabilities import capabilities
from echo.models import ApiKey

KEY_PREFIX = "ek_"
NAME_MAX_LENGTH = 64
TOPICS_MAX_LENGTH = 512


class ApiKeyError(ValueError):
    """Raised when a key cannot be made or revoked as asked: a bad name or pattern, a name taken or not."""


def new_key() -> str:
    """A new random key (256 bits), to be shown once and stored only as ``key_digest(key)``."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(key: str) -> str:
    """The SHA-256 hex digest stored for ``key``. Keys are random, so a fast digest is enough."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def bearer_key(request: HttpRequest) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header (the scheme in any case), else None."""
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.strip().partition(" ")
    key = credentials.strip()
    if scheme.lower() != "bearer" or not key:
        return None
    return key


async def authenticate_key(key: str) -> ApiKey | None:
    """The ``ApiKey`` that ``key`` is, or None for a revoked or unknown key. One database query."""
    return await ApiKey.objects.filter(digest=key_digest(key)).afirst()


def publish_grant(key: ApiKey) -> tuple[str, ...]:
    """The topic patterns ``key`` may publish to (none: it publishes nothing)."""
    return _grant(key.publish_topics)


def read_grant(key: ApiKey) -> tuple[str, ...]:
    """The topic patterns ``key``'s tokens may read, within the topic rules (none: it reads nothing)."""
    return _grant(key.read_topics)


def _grant(text: str) -> tuple[str, ...]:
    try:
        return parse_list(text)
    except PatternError:  # stored by create_key, which checked it: only a hand-edited row gets here
        return ()


# ---------------------------------------------------------------- making and revoking (manage.py api_key)


def create_key(name: str, *, publish: str = "", read: str = "") -> tuple[ApiKey, str]:
    """Store a new key named ``name`` with its grants: comma-separated topic patterns it may
    ``publish`` to and ``read``. Nothing is granted unless named (``*`` is every topic).

    Returns the stored row and the key itself, which exists nowhere else: show it once. Raises
    ``ApiKeyError`` for a name that is not a slug or is taken, a bad pattern, or no grant at all.
    """
    try:
        validate_slug(name)
    except ValidationError:
        raise ApiKeyError(f"invalid key name {name!r}: use letters, digits, '-' and '_'") from None
    if len(name) > NAME_MAX_LENGTH:
        raise ApiKeyError(f"invalid key name {name!r}: at most {NAME_MAX_LENGTH} characters")
    grants = []
    for what, text in (("publish", publish), ("read", read)):
        try:
            patterns = ",".join(parse_list(text))
        except PatternError as exc:
            raise ApiKeyError(f"--{what}: {exc}") from None
        if len(patterns) > TOPICS_MAX_LENGTH:
            raise ApiKeyError(f"--{what}: too many topic patterns (at most {TOPICS_MAX_LENGTH} characters)")
        grants.append(patterns)
    if not any(grants):
        raise ApiKeyError(
            "a key with no grant can do nothing: give --publish PATTERNS and/or --read PATTERNS "
            "('*' is every topic)"
        )
    key = new_key()
    try:
        row = ApiKey.objects.create(
            name=name, digest=key_digest(key), publish_topics=grants[0], read_topics=grants[1]
        )
    except IntegrityError:
        raise ApiKeyError(f"an API key named {name!r} exists already (revoke it first)") from None
    return row, key


def revoke_key(name: str) -> None:
    """Delete the key named ``name``: requests with it are refused from the next one on, and the
    sockets opened with its tokens are closed (``echo.access.revocation``)."""
    deleted, _ = ApiKey.objects.filter(name=name).delete()
    if not deleted:
        raise ApiKeyError(f"no API key named {name!r}")


# ---------------------------------------------------------------- the per-key rate limit

# A token bucket per key, kept as GCRA's "theoretical arrival time" (TAT): the moment the key's
# messages so far would have been spread out at the allowed rate. The bucket holds one second of
# messages. A request of n messages costs n / rate seconds; it fits if the TAT, pushed by its cost,
# stays within one second of now. A request bigger than the bucket (a batch larger than the limit)
# is let through only when the bucket is full, and leaves it in debt, so that every batch the API
# accepts can get through, and the key waits its cost afterwards. Times are whole microseconds
# from Redis's clock (one clock for every server process); ``_bucket`` is the same rule in Python.
RATE_SCRIPT = """
local cost = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local debt = tat - now
if debt + cost <= window or (debt == 0 and cost > window) then
    local expire_ms = math.ceil((debt + cost) / 1000) + 1000
    redis.call('SET', KEYS[1], string.format('%.0f', tat + cost), 'PX', expire_ms)
    return {1, 0}
end
if cost > window then
    return {0, debt}
end
return {0, debt + cost - window}
"""
WINDOW_US = 1_000_000


def _bucket(tat: float, now: float, cost: float, window: float) -> tuple[bool, float, float]:
    """RATE_SCRIPT's rule: (allowed, the new TAT, how long to wait if refused); any one time unit."""
    tat = max(tat, now)
    debt = tat - now
    if debt + cost <= window or (debt == 0 and cost > window):
        return True, tat + cost, 0.0
    return False, tat, debt if cost > window else debt + cost - window


@dataclass(frozen=True)
class RateDecision:
    """Whether a request may go ahead and, if not, how many whole seconds to wait (``Retry-After``)."""

    allowed: bool
    retry_after: int = 0


class KeyRateLimit:
    """``API_RATE_LIMIT`` messages per second per key; a batch counts each of its messages.

    On this project's layer (``RedisFanoutChannelLayer``) the count lives in the layer's Redis, under
    ``<prefix>:apirate:<digest prefix>`` (not the row id, which SQLite may give a new key again),
    shared by every server process. On any other Channels layer (channels-redis) there is no Redis
    client to borrow, so each process counts for itself: with N processes a key may publish up to N
    times the limit. ``check`` raises the Redis client's error
    (``redis.RedisError``, ``OSError``) when Redis cannot be reached.
    """

    def __init__(self) -> None:
        self._local: dict[str, float] = {}  # key digest -> TAT, in seconds of time.monotonic()
        # The layer has one Redis client per event loop; a script object is bound to its client.
        self._scripts: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    async def check(self, layer: Any, key: ApiKey, messages: int, rate: float) -> RateDecision:
        """Count ``messages`` against ``key``'s limit of ``rate`` per second; a rate <= 0 is no limit."""
        if rate <= 0:
            return RateDecision(True)
        if capabilities(layer).shared_state:
            redis = layer.redis()
            script = self._scripts.get(redis)
            if script is None:
                script = self._scripts[redis] = redis.register_script(RATE_SCRIPT)
            cost_us = math.ceil(messages * 1_000_000 / rate)
            allowed, wait_us = await script(
                keys=[f"{layer.prefix}:apirate:{key.digest[:16]}"], args=[cost_us, WINDOW_US]
            )
            return _decision(bool(allowed), wait_us / 1_000_000)
        now = time.monotonic()
        allowed, tat, wait = _bucket(self._local.get(key.digest, now), now, messages / rate, 1.0)
        if allowed:
            self._local[key.digest] = tat
            if len(self._local) > 10_000:  # forget the keys whose buckets are full again
                self._local = {digest: t for digest, t in self._local.items() if t > now}
        return _decision(allowed, wait)


def _decision(allowed: bool, wait_seconds: float) -> RateDecision:
    # Retry-After is whole seconds (RFC 9110), rounded up, and never 0 for a refusal.
    return RateDecision(True) if allowed else RateDecision(False, max(1, math.ceil(wait_seconds)))
