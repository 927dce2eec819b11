"""Lanes: the connections of one topic that are in step with its stream, written to in one loop.

Delivering a pushed frame one connection at a time (``Relay.offer``) runs a dozen lines of Python per
connection, over a dozen objects scattered in memory; with thousands of connections most of the
server's CPU goes there, not into the socket writes. Most connections, most of the time, are in the
same state: idle, writable, and sent exactly the frames the process has relayed so far. A lane holds
those of one group (one per topic and process): its position in the stream is kept once for all of
them, and a run of events that simply continues it is joined and framed once, then written with each
socket's own ``write`` in one loop (``take``, called by the layer before it offers the run to the
other members).

A connection joins a lane after it was written to directly and its position equals the lane's, and
leaves it, its position then taken from the lane's, the moment anything else could matter: its
socket stops taking frames (full buffer, closing, gone: the server says so through
``DirectWriter``'s ``on_lost``), an event is queued for it, it starts closing, or it ends. A run that
does not continue the lane (a hole, a new epoch, another kind of event) dissolves it: every member
leaves with the lane's position, and the run goes the usual way, which recovers from history.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from echo.ops.metrics import hot_counts
from echo.protocol import RELAY_EVENT
from echo.ws.connections import DirectWriter
from echo.ws.sending import BATCH_CHARS

logger = logging.getLogger(__name__)

Events = Sequence[Mapping[str, Any]]


class Member(Protocol):
    """What a lane needs of a connection (``echo.ws.relay.Relay``)."""

    def left_lane(self, group: str, epoch: str | None, seq: int) -> None:
        """Called when the lane lets the connection go: it was sent up to (``epoch``, ``seq``)."""


class Lane:
    """One group's connections in step with its stream, at one position, and how to write to them."""

    __slots__ = ("epoch", "group", "layer", "members", "plan", "seq")

    def __init__(self, layer: Any, group: str, epoch: str | None, seq: int) -> None:
        self.layer, self.group = layer, group
        # The last frame every member was sent; (None, 0) for a stream that does not exist yet.
        self.epoch, self.seq = epoch, seq
        self.members: dict[str, tuple[Member, DirectWriter]] = {}  # channel name -> member
        # What take() loops over, made again after members change: per kind of socket, how to frame a
        # text and each socket's write; and the members' names.
        self.plan: tuple[list[tuple[Any, list[Any]]], frozenset[str]] | None = None

    def add(self, name: str, member: Member, writer: DirectWriter) -> None:
        self.members[name] = (member, writer)
        self.plan = None

    def remove(self, name: str) -> tuple[str | None, int]:
        """Let one member go; return the position it was sent up to."""
        if self.members.pop(name, None) is not None:
            self.plan = None
            if not self.members:
                lanes_of(self.layer).close(self)
        return self.epoch, self.seq

    def take(self, events: Events) -> frozenset[str] | None:
        """Called by the layer with a run of the group's events: written to every member if it simply
        continues the lane (the names of the members, which the layer then skips); else the lane is
        dissolved and None returned, so that every member gets the run the usual way."""
        run = continuation(events, self.group, self.epoch, self.seq, unnumbered=True)
        if run is None:
            self.dissolve()
            return None
        text, epoch, seq = run
        before, relayed = self.seq, seq - self.seq
        # Moved before writing: a member that leaves during the loop (its write filled its buffer)
        # has had this run.
        self.epoch, self.seq = epoch, seq
        kinds, names = self.plan or self._make_plan()
        for frame_of, writes in kinds:
            frame = frame_of(text)
            for write in writes:
                try:
                    write(frame)
                except Exception:  # a bug: the socket should have left the lane before it closed
                    self._failed(write, before)
        hot_counts.frames_out += len(names)
        hot_counts.messages_relayed += relayed * len(names)
        return names

    def dissolve(self) -> None:
        """Let every member go, each with the lane's position, and close the lane."""
        members, self.members = self.members, {}
        for member, _ in members.values():
            member.left_lane(self.group, self.epoch, self.seq)
        lanes_of(self.layer).close(self)

    def _make_plan(self) -> tuple[list[tuple[Any, list[Any]]], frozenset[str]]:
        by_kind: dict[Any, tuple[Any, list[Any]]] = {}
        for _, writer in self.members.values():
            by_kind.setdefault(writer.kind, (writer.frame, []))[1].append(writer.write)
        self.plan = list(by_kind.values()), frozenset(self.members)
        return self.plan

    def _failed(self, write: Any, before: int) -> None:
        for name, (member, writer) in list(self.members.items()):
            if writer.write == write:
                logger.warning("Writing to %s failed; it leaves the lane of %s", name, self.group)
                self.members.pop(name)
                self.plan = None
                # It did not get this run: it recovers it from history (a hole before its next frame).
                member.left_lane(self.group, self.epoch, before)


class Lanes:
    """The lanes of one channel layer's event loop (one server process), one per group."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.by_group: dict[str, Lane] = {}

    def join(
        self, group: str, name: str, member: Member, writer: DirectWriter, position: tuple[str | None, int]
    ) -> bool:
        """Add a connection at ``position`` to the group's lane (opened there if there is none);
        False if the lane is elsewhere in the stream."""
        lane = self.by_group.get(group)
        if lane is None:
            lane = self.by_group[group] = Lane(self.layer, group, *position)
            self.layer.set_lane(group, lane.take)
        elif (lane.epoch, lane.seq) != position:
            return False
        lane.add(name, member, writer)
        return True

    def get(self, group: str) -> Lane | None:
        return self.by_group.get(group)

    def close(self, lane: Lane) -> None:
        if self.by_group.get(lane.group) is lane:
            del self.by_group[lane.group]
            self.layer.set_lane(lane.group, None)


_lanes: weakref.WeakKeyDictionary[Any, Lanes] = weakref.WeakKeyDictionary()


def lanes_of(layer: Any) -> Lanes:
    """The lanes kept beside ``layer`` (one event loop per server process)."""
    found = _lanes.get(layer)
    if found is None:
        found = _lanes[layer] = Lanes(layer)
    return found


def continuation(
    events: Sequence[Mapping[str, Any]], group: str, epoch: str | None, seq: int, *, unnumbered: bool
) -> tuple[str, str | None, int] | None:
    """The events' texts newline-joined and the position they end at, if they are relay frames that
    simply continue ``group``'s stream from ``(epoch, seq)`` (``(None, 0)``: from before its first
    frame) and fit in one batch; else None. ``unnumbered`` lets frames without a position (presence
    counts) in, in place."""
    texts = []
    for event in events:
        if event["type"] != RELAY_EVENT:
            return None
        if "seq" in event:
            if event["group"] != group or event["seq"] != seq + 1:
                return None
            if event["epoch"] != epoch:
                if epoch is not None or seq != 0:
                    return None
                epoch = event["epoch"]  # the first frame of a stream that did not exist yet
            seq += 1
        elif not unnumbered:
            return None
        texts.append(event["text"])
    text = texts[0] if len(texts) == 1 else "\n".join(texts)
    return (text, epoch, seq) if len(text) <= BATCH_CHARS else None
