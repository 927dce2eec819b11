"""Topic patterns, parsed once into matchers whose cost is linear in the topic: no regular expression.

A pattern is topic characters (``a-z 0-9 _ -``), ``*`` (any run of them, empty included) and named
parts: a name ending in ``_id`` (``{user_id}``, ``{order_id}``) is an id, ``1`` to
``9999999999999999999``; any other name (``{slug}``) is a run of ``a-z 0-9 _``. Names are
``a-z 0-9 _``, at most 32 characters, each once in a pattern. The same syntax serves
``WS_TOPIC_ACCESS``, API keys' grants and connection tokens, so a client may send patterns too: that
is why they are never turned into a backtracking regular expression. Matching a topic is one pass over
the part before the first ``*`` and a left-to-right ``str.find`` per literal between stars (the
classic glob algorithm, which never has to go back), so no pattern can hold a worker.

To keep that pass deterministic, named parts stand only before the first ``*``, and each is followed by
the end of the pattern or by a character its own part cannot contain (``user-{user_id}-inbox``, not
``{user_id}*`` nor ``{user_id}7``; ``{slug}-x``, not ``{slug}_x``). Patterns are at most
``MAX_PATTERN_LENGTH`` characters with at most ``MAX_WILDCARDS`` stars. A pattern that breaks a rule
raises ``PatternError`` with one line saying which.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

MAX_PATTERN_LENGTH = 100
MAX_WILDCARDS = 8
LITERAL_CHARACTERS = frozenset(string.ascii_lowercase + string.digits + "_-")


@dataclass(frozen=True)
class Part:
    """A named part's alphabet and length: it takes the longest run of ``characters`` it finds."""

    characters: frozenset[str]
    max_length: int
    leading: frozenset[str]  # what its first character may be

    def valid(self, text: str) -> bool:
        return 0 < len(text) <= self.max_length and text[0] in self.leading


_DIGITS = frozenset(string.digits)
_WORD = frozenset(string.ascii_lowercase + string.digits + "_")
ID_PART = Part(_DIGITS, 19, _DIGITS - {"0"})
WORD_PART = Part(_WORD, 48, _WORD)
NAME_CHARACTERS = _WORD
MAX_NAME_LENGTH = 32


def part_named(name: str) -> Part | None:
    """The part a name stands for (``*_id``: an id; else a word), or None for a name not allowed."""
    if not name or len(name) > MAX_NAME_LENGTH or not set(name) <= NAME_CHARACTERS or name[0].isdigit():
        return None
    return ID_PART if name.endswith("_id") else WORD_PART


class PatternError(ValueError):
    """Raised for a pattern that cannot be parsed: the message says what is wrong, in one line."""


@dataclass(frozen=True)
class TopicPattern:
    """One parsed pattern: ``match(topic)`` returns its named parts (a dict) or None."""

    text: str
    head: tuple[str | tuple[str, Part], ...]  # before the first "*": literals and (name, part)s
    pieces: tuple[str, ...] = ()  # literals between stars, in order
    tail: str | None = None  # the literal after the last "*"; None when there is no star

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(item[0] for item in self.head if isinstance(item, tuple))

    def match(self, topic: str) -> dict[str, str] | None:
        """The named parts if ``topic`` matches the whole pattern, else None."""
        parts: dict[str, str] = {}
        position = 0
        for item in self.head:
            if isinstance(item, str):
                if not topic.startswith(item, position):
                    return None
                position += len(item)
                continue
            name, part = item
            end = position
            while end < len(topic) and topic[end] in part.characters:
                end += 1
            if not part.valid(topic[position:end]):
                return None
            parts[name] = topic[position:end]
            position = end
        if self.tail is None:
            return parts if position == len(topic) else None
        end = len(topic) - len(self.tail)
        if end < position or not topic.endswith(self.tail):
            return None
        for piece in self.pieces:  # leftmost first: a later piece can only gain from it
            found = topic.find(piece, position, end)
            if found < 0:
                return None
            position = found + len(piece)
        return parts


def parse(text: object) -> TopicPattern:
    """Parse one pattern; raise ``PatternError`` saying what is wrong with it."""
    if not isinstance(text, str) or not text:
        raise PatternError(f"invalid topic pattern {text!r}: expected a non-empty string")
    if len(text) > MAX_PATTERN_LENGTH:
        raise PatternError(f"invalid topic pattern {text[:20]!r}...: longer than {MAX_PATTERN_LENGTH}")
    if text.count("*") > MAX_WILDCARDS:
        raise PatternError(f"invalid topic pattern {text!r}: more than {MAX_WILDCARDS} '*'")
    first, *rest = text.split("*")
    head = _parse_head(text, first, followed_by_star=bool(rest))
    for literal in rest:
        if not set(literal) <= LITERAL_CHARACTERS:
            raise PatternError(
                f"invalid topic pattern {text!r}: a-z 0-9 _ - and '*', with {{user_id}} before any '*'"
            )
    if not rest:
        return TopicPattern(text, head)
    return TopicPattern(text, head, tuple(piece for piece in rest[:-1] if piece), rest[-1])


def _parse_head(text: str, head: str, *, followed_by_star: bool) -> tuple[str | tuple[str, Part], ...]:
    items: list[str | tuple[str, Part]] = []
    literal = ""
    rest = head
    while rest:
        character, rest = rest[0], rest[1:]
        if character in LITERAL_CHARACTERS:
            literal += character
            continue
        name, closing, after = rest.partition("}")
        if character != "{" or not closing:
            raise PatternError(
                f"invalid topic pattern {text!r}: a-z 0-9 _ - and '*', with {{user_id}} before any '*'"
            )
        part = part_named(name)
        if part is None:
            raise PatternError(
                f"invalid topic pattern {text!r}: bad part name {{{name[:40]}}} "
                f"(a-z 0-9 _, at most {MAX_NAME_LENGTH} characters)"
            )
        if any(isinstance(item, tuple) and item[0] == name for item in items):
            raise PatternError(f"invalid topic pattern {text!r}: {{{name}}} stands twice")
        following = after[:1]
        if following == "{" or following in part.characters or (not after and followed_by_star):
            raise PatternError(
                f"invalid topic pattern {text!r}: {{{name}}} must be followed by the end or by a "
                "character it cannot contain (not by '*', another part or a digit)"
            )
        if literal:
            items.append(literal)
            literal = ""
        items.append((name, part))
        rest = after
    if literal:
        items.append(literal)
    return tuple(items)


@lru_cache(maxsize=4096)
def compiled(text: str) -> TopicPattern:
    """``parse(text)``, remembered: for patterns read again and again (tokens, keys' grants)."""
    return parse(text)


def parse_list(text: str) -> tuple[str, ...]:
    """Split a comma-separated list of patterns, checking each; raise ``PatternError`` if one is bad."""
    patterns = tuple(item.strip() for item in text.split(",") if item.strip())
    for pattern in patterns:
        parse(pattern)
    return patterns


def matches_any(topic: str, patterns: Iterable[str]) -> bool:
    """True if ``topic`` matches one of ``patterns`` (a pattern that does not parse matches nothing)."""
    for pattern in patterns:
        try:
            if compiled(pattern).match(topic) is not None:
                return True
        except PatternError:
            continue
    return False
