"""Who may read which topic: one setting, ``WS_TOPIC_ACCESS``, maps topic patterns to rules.

    WS_TOPIC_ACCESS = {
        "user-{user_id}": "owner",      # user-42: only user 42
        "user-*": "nobody",             # any other user-... name
        "ops-*": "perm:auth.view_user", # a Django permission
        "team-red": "group:red",        # members of the Django group "red"
        "*": "public",
    }

The first pattern (in order) that a topic matches decides; a topic that matches none is refused, and
so is an unknown rule (a startup error, ``ImproperlyConfigured``). In a pattern, ``*`` matches any run
of topic characters and ``{user_id}`` a user's id. Rules: ``public`` (anyone), ``authenticated``
(logged-in users), ``owner`` (the user whose id the pattern's ``{user_id}`` matched), ``staff``,
``perm:<app_label>.<codename>``, ``group:<name>``, ``nobody``. Superusers may read every topic but
``nobody``'s. A reader holding an API key's token may read the topics of the key's patterns.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from echo.conf import app_settings

PUBLIC = "public"
SIMPLE_RULES = frozenset({PUBLIC, "authenticated", "owner", "staff", "nobody"})
PARAMETER_RULES = ("perm:", "group:")
_PATTERN_SYNTAX = re.compile(r"(?:[a-z0-9_-]|\*|\{user_id\})+")


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a topic pattern (``*`` and ``{user_id}`` on topic characters) to a regular expression."""
    if not isinstance(pattern, str) or not _PATTERN_SYNTAX.fullmatch(pattern):
        raise ValueError(f"invalid topic pattern {pattern!r}: a-z 0-9 _ - with * and {{user_id}}")
    regex = re.escape(pattern).replace(r"\*", "[a-z0-9_-]*")
    regex = regex.replace(r"\{user_id\}", "(?P<user_id>[1-9][0-9]{0,18})")
    return re.compile(regex)


def parse_patterns(text: str) -> tuple[str, ...]:
    """Split a comma-separated list of topic patterns, checking each; raise ``ValueError`` if bad."""
    patterns = tuple(item.strip() for item in text.split(",") if item.strip())
    for pattern in patterns:
        compile_pattern(pattern)
    return patterns


def matches_any(topic: str, patterns: Iterable[str]) -> bool:
    """True if ``topic`` matches one of ``patterns``."""
    return any(_compiled(pattern).fullmatch(topic) for pattern in patterns)


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    return compile_pattern(pattern)


@dataclass(frozen=True)
class Rule:
    """One entry of ``WS_TOPIC_ACCESS``: the pattern and what it asks of a reader."""

    pattern: str
    regex: re.Pattern[str]
    rule: str

    @property
    def public(self) -> bool:
        return self.rule == PUBLIC


@dataclass(frozen=True)
class Reader:
    """Who opens a connection or asks for topics: a Django user, and what a token narrows them to.

    ``key`` and ``key_topics`` are set when the reader holds an API key (or its token): the key and
    its patterns (empty: all). ``token_topics`` is set when the reader's token names the only topics it
    may be used for.
    """

    user: Any  # a User or AnonymousUser
    key: Any = None  # an echo.models.ApiKey
    key_topics: tuple[str, ...] | None = None
    token_topics: tuple[str, ...] | None = None

    @property
    def name(self) -> str:
        """How presence lists this reader."""
        if self.key is not None:
            return f"key:{self.key.name}"
        return str(self.user.get_username()) if self.user.is_authenticated else "anonymous"


class TopicAccess:
    """The compiled ``WS_TOPIC_ACCESS`` setting: which rule covers a topic, and whether a reader passes."""

    def __init__(self, mapping: Mapping[str, str]) -> None:
        self.rules: list[Rule] = []
        for pattern, rule in mapping.items():
            try:
                regex = compile_pattern(pattern)
            except ValueError as exc:
                raise ImproperlyConfigured(f"WS_TOPIC_ACCESS: {exc}") from None
            if rule not in SIMPLE_RULES and not (rule.startswith(PARAMETER_RULES) and rule.partition(":")[2]):
                expected = ", ".join(sorted(SIMPLE_RULES))
                raise ImproperlyConfigured(
                    f"WS_TOPIC_ACCESS[{pattern!r}] = {rule!r}: expected one of {expected}, "
                    "perm:<app_label>.<codename> or group:<name>"
                )
            if rule == "owner" and "{user_id}" not in pattern:
                raise ImproperlyConfigured(
                    f"WS_TOPIC_ACCESS[{pattern!r}] = 'owner' needs {{user_id}} in the pattern"
                )
            self.rules.append(Rule(pattern, regex, rule))

    def rule_for(self, topic: str) -> Rule | None:
        """The first rule whose pattern ``topic`` matches, or None (refused)."""
        for rule in self.rules:
            if rule.regex.fullmatch(topic):
                return rule
        return None

    def is_public(self, topic: str) -> bool:
        """True if anyone may read ``topic``: no database query needed."""
        rule = self.rule_for(topic)
        return rule is not None and rule.public

    async def can_read(self, reader: Reader, topic: str) -> bool:
        """True if ``reader`` may read ``topic``. May query the database (permissions, groups)."""
        if reader.token_topics is not None and not matches_any(topic, reader.token_topics):
            return False
        if reader.key_topics is not None:
            return not reader.key_topics or matches_any(topic, reader.key_topics)
        rule = self.rule_for(topic)
        if rule is None or rule.rule == "nobody":
            return False
        if rule.public:
            return True
        user = reader.user
        if not user.is_authenticated or not user.is_active:
            return False
        return bool(user.is_superuser) or await self._user_passes(rule, user, topic)

    @staticmethod
    async def _user_passes(rule: Rule, user: Any, topic: str) -> bool:
        kind, _, argument = rule.rule.partition(":")
        if kind == "staff":
            return bool(user.is_staff)
        if kind == "owner":
            match = rule.regex.fullmatch(topic)
            return match is not None and match["user_id"] == str(user.pk)
        if kind == "perm":
            return bool(await user.ahas_perm(argument))
        if kind == "group":
            return bool(await user.groups.filter(name=argument).aexists())
        return kind == "authenticated"

    async def readable(self, reader: Reader, topics: Iterable[str]) -> list[str]:
        """The ``topics`` that ``reader`` may read, in order."""
        return [topic for topic in topics if await self.can_read(reader, topic)]


_current: tuple[Mapping[str, str], TopicAccess] | None = None


def topic_access() -> TopicAccess:
    """The rules of the current ``WS_TOPIC_ACCESS``, compiled again only when the setting changes."""
    global _current
    mapping = app_settings.WS_TOPIC_ACCESS
    if _current is None or _current[0] is not mapping:
        _current = (mapping, TopicAccess(mapping))
    return _current[1]
