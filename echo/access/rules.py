"""Who may read which topic: one setting, ``WS_TOPIC_ACCESS``, maps topic patterns to rules.

    WS_TOPIC_ACCESS = {
        "user-{user_id}": "owner",      # user-42: only user 42
        "user-*": "nobody",             # any other user-... name
        "ops-*": "perm:auth.view_user", # a Django permission
        "team-red": "group:red",        # members of the Django group "red"
        "*": "public",
    }

The first pattern (in order) that a topic matches decides; a topic that matches none is refused, and
so is an unknown rule or a malformed pattern (``ImproperlyConfigured``, and ``echo.E001`` from
``manage.py check``). Patterns are ``echo.access.patterns``'. Rules: ``public`` (anyone),
``authenticated`` (logged-in users), ``owner`` (the user whose id the pattern's ``{user_id}``
matched), ``staff``, ``perm:<app_label>.<codename>``, ``group:<name>``, ``nobody``, and
``call:<dotted.path>``: the app decides, per object::

    "order-{order_id}": "call:shop.access.can_read_order",

    def can_read_order(user, order_id):   # or async def; the pattern's named parts, as strings
        return Order.objects.filter(pk=order_id, owner=user).exists()

A sync function runs off the event loop (it may use the ORM); only ``True`` lets the user in; an
exception refuses and logs one line. The answer holds for the connection's life, and is asked again
on its user's revocation events (``echo.access.revocation.access_changed(user)`` sends one).
Superusers may read every topic but ``nobody``'s.

An API key (or a token made from one) reads only topics of its read grant, and even there only what
the rules let an identity that is no user read: ``public`` topics, and ``authenticated`` ones, since
the key did authenticate. ``owner``, ``staff``, ``perm:``, ``group:`` and ``call:`` need a user;
``nobody`` is nobody. ``TopicAccess.can_read`` is the one place this is decided: the socket, the
topic list and presence all ask it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from echo.access.patterns import PatternError, TopicPattern, matches_any, parse
from echo.conf import app_settings
from echo.ops import metrics

logger = logging.getLogger(__name__)

PUBLIC = "public"
SIMPLE_RULES = frozenset({PUBLIC, "authenticated", "owner", "staff", "nobody"})
PARAMETER_RULES = ("perm:", "group:", "call:")


@dataclass(frozen=True)
class Rule:
    """One entry of ``WS_TOPIC_ACCESS``: the pattern and what it asks of a reader (and, for a
    ``call:`` rule, the app's function that decides)."""

    pattern: TopicPattern
    rule: str
    decide: Callable[..., Any] | None = None

    @property
    def public(self) -> bool:
        return self.rule == PUBLIC


@dataclass(frozen=True)
class Reader:
    """Who opens a connection or asks for topics: a Django user, or an API key, and what narrows them.

    ``key`` is set when the reader holds an API key (or a token made from one); ``key_read`` is then
    the key's read grant (patterns; empty: nothing). ``token_topics`` is set when the reader's token
    names the only topics it may be used for.
    """

    user: Any  # a User or AnonymousUser
    key: Any = None  # an echo.models.ApiKey
    key_read: tuple[str, ...] = ()
    token_topics: tuple[str, ...] | None = None

    @property
    def name(self) -> str:
        """How presence lists this reader."""
        if self.key is not None:
            return f"key:{self.key.name}"
        return str(self.user.get_username()) if self.user.is_authenticated else "anonymous"


class TopicAccess:
    """The parsed ``WS_TOPIC_ACCESS`` setting: which rule covers a topic, and whether a reader passes."""

    def __init__(self, mapping: Mapping[str, str]) -> None:
        if not isinstance(mapping, Mapping):
            raise ImproperlyConfigured("WS_TOPIC_ACCESS must be a dict of topic pattern -> rule")
        self.rules: list[Rule] = []
        for text, rule in mapping.items():
            try:
                pattern = parse(text)
            except PatternError as exc:
                raise ImproperlyConfigured(f"WS_TOPIC_ACCESS: {exc}") from None
            if not isinstance(rule, str) or (
                rule not in SIMPLE_RULES and not (rule.startswith(PARAMETER_RULES) and rule.partition(":")[2])
            ):
                expected = ", ".join(sorted(SIMPLE_RULES))
                raise ImproperlyConfigured(
                    f"WS_TOPIC_ACCESS[{text!r}] = {rule!r}: expected one of {expected}, "
                    "perm:<app_label>.<codename>, group:<name> or call:<dotted.path>"
                )
            if rule == "owner" and "user_id" not in pattern.names:
                raise ImproperlyConfigured(
                    f"WS_TOPIC_ACCESS[{text!r}] = 'owner' needs {{user_id}} in the pattern"
                )
            self.rules.append(Rule(pattern, rule, _decider(text, rule) if rule.startswith("call:") else None))

    def rule_for(self, topic: str) -> tuple[Rule, dict[str, str]] | None:
        """The first rule whose pattern ``topic`` matches, with the pattern's named parts; or None."""
        for rule in self.rules:
            parts = rule.pattern.match(topic)
            if parts is not None:
                return rule, parts
        return None

    def decided_by_app(self, topic: str) -> bool:
        """True if a ``call:`` rule decides ``topic``: its answer may change without a revocation."""
        found = self.rule_for(topic)
        return found is not None and found[0].decide is not None

    def is_public(self, topic: str) -> bool:
        """True if anyone may read ``topic``: no database query needed."""
        found = self.rule_for(topic)
        return found is not None and found[0].public

    async def can_read(self, reader: Reader, topic: str) -> bool:
        """True if ``reader`` may read ``topic``. May query the database (permissions, groups)."""
        if reader.token_topics is not None and not matches_any(topic, reader.token_topics):
            return False
        found = self.rule_for(topic)
        if found is None:
            return False
        rule, parts = found
        if reader.key is not None:  # a key is no user: it has no id, flag, permission or group
            return rule.rule in (PUBLIC, "authenticated") and matches_any(topic, reader.key_read)
        return await self._user_passes(reader.user, rule, parts)

    @staticmethod
    async def _user_passes(user: Any, rule: Rule, parts: dict[str, str]) -> bool:
        kind, _, argument = rule.rule.partition(":")
        if kind in (PUBLIC, "nobody") or not (user.is_authenticated and user.is_active):
            return kind == PUBLIC
        if user.is_superuser or kind == "authenticated":
            return True
        if kind == "perm":
            return bool(await user.ahas_perm(argument))
        if kind == "group":
            return bool(await user.groups.filter(name=argument).aexists())
        if kind == "call":
            return await _ask(rule, user, parts)
        return bool(user.is_staff) if kind == "staff" else parts.get("user_id") == str(user.pk)

    async def readable(self, reader: Reader, topics: Iterable[str]) -> list[str]:
        """The ``topics`` that ``reader`` may read, in order."""
        return [topic for topic in topics if await self.can_read(reader, topic)]


def _decider(pattern: str, rule: str) -> Callable[..., Any]:
    """The function a ``call:`` rule names, imported now: a wrong path is a startup error (echo.E001)."""
    path = rule.partition(":")[2]
    try:
        found = import_string(path)
    except ImportError as exc:
        raise ImproperlyConfigured(f"WS_TOPIC_ACCESS[{pattern!r}] = {rule!r}: {exc}") from None
    if not callable(found):
        raise ImproperlyConfigured(f"WS_TOPIC_ACCESS[{pattern!r}] = {rule!r}: not a function")
    if inspect.iscoroutinefunction(found):
        return found
    # A sync function may use the ORM: it runs in a thread, with Django's connection handling.
    return database_sync_to_async(found)


async def _ask(rule: Rule, user: Any, parts: dict[str, str]) -> bool:
    """The app's answer: ``decide(user, **parts)``; an exception refuses, in one log line."""
    assert rule.decide is not None
    try:
        return (await rule.decide(user, **parts)) is True
    except Exception as exc:
        logger.warning("Access rule %s refused %s: %s: %s", rule.rule, parts, type(exc).__name__, exc)
        metrics.inc("ws_errors_total", "access_rule")
        return False


_current: tuple[Mapping[str, str], TopicAccess] | None = None


def topic_access() -> TopicAccess:
    """The rules of the current ``WS_TOPIC_ACCESS``, compiled again only when the setting changes."""
    global _current
    mapping = app_settings.WS_TOPIC_ACCESS
    if _current is None or _current[0] is not mapping:
        _current = (mapping, TopicAccess(mapping))
    return _current[1]
