"""The stream contract of one connection: where its client stands in each topic, and what to send next.

A topic's frames are numbered by Redis (``echo.layer.history``): ``seq`` counts 1, 2, 3... within an
``epoch``, and a new epoch starts at 1 whenever Redis no longer has the topic's counter (it restarted
empty, say). A client's position in a topic is therefore (epoch, seq), and what it is owed is:

* within an epoch, every frame exactly once and in order: live frames it already has are dropped, and
  a live frame that would leave a hole is held back until the hole is filled from history;
* a ``reset`` (with the new epoch) before any frame of another epoch, and only when what it missed
  is really gone: an epoch that ended, or history that no longer reaches back that far;
* when it reconnects with ``since``, exactly what it missed, or a ``reset`` and what there is.

``TopicStreams`` decides all of that and nothing else: it is the one place where frames are deduped.
It never touches a socket or Redis: the consumer hands it each live event, and a function that reads
history (the layer's ``group_history``), so it can be tested with neither.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Mapping
from enum import Enum
from typing import NamedTuple, Protocol

from echo.protocol import Position, as_replay, group_topic, reset_frame


class Verdict(Enum):
    """What to do with a live frame."""

    SEND = "send"  # the next frame of the client's stream
    DUPLICATE = "duplicate"  # the client has it already (it was replayed): drop it
    RECOVER = "recover"  # a hole before it, or another epoch: catch up from history first


class History(Protocol):
    """A topic's stream as Redis had it at one moment (``echo.layer.history.History``)."""

    @property
    def epoch(self) -> str | None: ...
    @property
    def seq(self) -> int: ...
    @property
    def entries(self) -> list[tuple[int, str]]: ...


class ReadHistory(Protocol):
    """Reads a group's history: ``after`` a seq of the current epoch, or else the newest ``last``."""

    def __call__(self, group: str, *, after: int | None = None, last: int = 0) -> Awaitable[History]: ...


class CatchUp(NamedTuple):
    """What catching up on one topic produced: frames to send, how many were replayed, a reset or not."""

    frames: list[str]
    replayed: int
    reset: bool


class _Cursor:
    """The last frame a client was sent of one topic (its mutable position)."""

    __slots__ = ("epoch", "seq")

    def __init__(self, epoch: str | None, seq: int) -> None:
        self.epoch = epoch
        self.seq = seq


class TopicStreams:
    """One connection's position in each topic it follows, and the rules for moving it.

    A group has no position until it is first caught up (``catch_up``), unless the client said where
    it stands (``since``). Live frames are checked (``check``) and, once sent, recorded (``advance``).
    """

    __slots__ = ("_cursors", "history", "skips")  # one per connection, held for its life

    def __init__(
        self, history: int, since: Mapping[str, Position] | None = None, *, skips: bool = False
    ) -> None:
        self.history = history
        # Paced by the layer (max_rate): live seqs skip forward on purpose, and a skip is no hole.
        self.skips = skips
        self._cursors = {group: _Cursor(*position) for group, position in (since or {}).items()}

    def position(self, group: str) -> Position | None:
        cursor = self._cursors.get(group)
        return None if cursor is None else Position(cursor.epoch, cursor.seq)

    def check(self, group: str, epoch: str, seq: int) -> Verdict:
        """Say what to do with the live frame (``epoch``, ``seq``) of ``group``; changes nothing."""
        if self.next_in(group, epoch, seq) is not None:
            return Verdict.SEND
        cursor = self._cursors.get(group)
        if cursor is None or epoch != cursor.epoch:
            return Verdict.RECOVER
        return Verdict.DUPLICATE if seq <= cursor.seq else Verdict.RECOVER

    def next_in(self, group: str, epoch: str, seq: int) -> _Cursor | None:
        """``group``'s cursor if the live frame (``epoch``, ``seq``) is simply the next to send, else
        None. The caller moves the cursor once the frame is on its way (``cursor.epoch``, ``.seq``):
        the hot path's ``check`` and ``advance`` in one lookup."""
        cursor = self._cursors.get(group)
        if cursor is None:
            return None
        if epoch == cursor.epoch:
            return cursor if seq == cursor.seq + 1 or (self.skips and seq > cursor.seq) else None
        # The first frame of a stream that did not exist yet.
        return cursor if cursor.epoch is None and cursor.seq == 0 and seq == 1 else None

    def advance(self, group: str, epoch: str | None, seq: int) -> None:
        """Record that the live frame (``epoch``, ``seq``) of ``group`` was sent."""
        cursor = self._cursors.get(group)
        if cursor is None:
            self._cursors[group] = _Cursor(epoch, seq)
        else:
            cursor.epoch, cursor.seq = epoch, seq

    async def catch_up(self, group: str, read: ReadHistory) -> CatchUp:
        """Bring the client's view of ``group`` up to what Redis has now; return the frames for it.

        Called on connect, before the connection joins the group (a frame published in between then
        arrives as a hole before the first live one, and this is called again for it), when Redis came
        back after an outage, and when a live frame cannot be sent as it is. Raises what ``read``
        raises (Redis unreachable); the position is then unchanged.
        """
        topic = group_topic(group)
        cursor = self._cursors.get(group)
        if cursor is None:  # a new subscription: the newest `history` frames, then live
            found = await read(group, last=self.history)
            return self._moved_to(group, found, found.entries)
        found = await read(group, after=cursor.seq)
        if found.epoch is not None and found.epoch == cursor.epoch:
            if cursor.seq > found.seq:
                reason = f"the stream is at seq {found.seq}, behind the {cursor.seq} already seen"
            elif found.seq > cursor.seq and (not found.entries or found.entries[0][0] != cursor.seq + 1):
                reason = f"history no longer reaches back to seq {cursor.seq + 1}"
            else:
                return self._moved_to(group, found, found.entries)
            recent = await read(group, last=self.history)
            return self._moved_to(group, recent, recent.entries, reset_frame(topic, recent.epoch, reason))
        if cursor.epoch is None and cursor.seq == 0:
            return self._moved_to(group, found, found.entries)  # nothing seen yet: all of it (after 0)
        if found.epoch is None:
            reason = "the stream is gone (Redis lost it); a new one starts at seq 1"
            return self._moved_to(group, found, [], reset_frame(topic, None, reason))
        whole = found if cursor.seq == 0 else await read(group, after=0)
        reason = (
            f"the stream started again as epoch {whole.epoch}; epoch {cursor.epoch} is gone"
            if cursor.epoch is not None
            else "a position without an epoch cannot be checked"
        )
        return self._moved_to(group, whole, whole.entries, reset_frame(topic, whole.epoch, reason))

    def _moved_to(
        self, group: str, found: History, entries: Iterable[tuple[int, str]], reset: str | None = None
    ) -> CatchUp:
        cursor = self._cursors.get(group)
        start = 0 if reset is not None or cursor is None or cursor.epoch != found.epoch else cursor.seq
        replayed = [as_replay(text) for seq, text in entries if seq > start]
        self._cursors[group] = _Cursor(found.epoch, max(found.seq, start))
        frames = [reset, *replayed] if reset is not None else replayed
        return CatchUp(frames, len(replayed), reset is not None)
