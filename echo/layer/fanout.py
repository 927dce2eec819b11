"""One process's channels and groups, and how an event reaches each local member: no Redis here.

The channel layer (``echo.layer``) receives a group message once per process; this hands that one
(shared, read-only) event to every local member of the group. Each channel holds at most
``capacity`` events: when its consumer falls that far behind, the queue is emptied, the drop counted
and logged, and the consumer gets one ``OVERFLOW_EVENT`` instead, so that it can tell its client
rather than lose data silently.

A consumer can take events in two ways, and a channel says which: wait in ``receive`` (Channels'
own way, every consumer), or be called back (``on_queued``) and take everything waiting at once,
optionally offered new events synchronously first (``direct``) while its queue is empty. The
second way is what ``echo.ws.delivery`` uses, so that an idle connection keeps no task waiting.

A group may also have a lane (``set_lane``): a function offered each run of the group's events
before any member is, which writes them itself to the members it holds (in one loop, without a call
per member into their consumers) and returns their names; those are then skipped.

Group events that arrive together (the reader found several Redis messages waiting) are handed over
together: ``collect`` holds them until the reader has none left waiting, and every member is then
offered the whole run of a group at once (one list object for all of them), so that a consumer can
send it in one frame with one write, instead of queueing each event and waking a task.

A channel may be paced (``max_rate``, ``echo.layer.conflation``): its groups' numbered events then reach it
through one ``Pace`` per group and rate, shared by every such channel of the process, which passes on
the newest event when one is due; the events in between cost nothing per channel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence, Set
from typing import Any

from echo.layer.conflation import Conflation
from echo.layer.events import OVERFLOW_EVENT

logger = logging.getLogger(__name__)

Event = Mapping[str, Any]  # group events are read-only: one object for every member
Events = Sequence[Event]  # events handed over together, in order: one object for every member
# A group's lane: takes a run of the group's events for the members it holds; their names, or None.
Lane = Callable[[Events], "Set[str] | None"]
# What the reader holds back while more Redis messages wait, at most: then it delivers what it holds.
COLLECT_EVENTS = 64


class Channel:
    """One local channel: a bounded queue of events, and whom to wake when one is queued."""

    __slots__ = ("capacity", "direct", "events", "groups", "max_rate", "on_queued", "waiter")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # Offered new events (a run of one group's, in order) while the queue is empty; True means it
        # handled them all, False that they are to be queued.
        self.direct: Callable[[Events], bool] | None = None
        # Called when the queue stops being empty, for consumers that do not wait in receive().
        self.on_queued: Callable[[], None] | None = None
        # A list, not a deque: an empty deque costs 600 bytes, and a channel's queue is empty nearly
        # all the time. Taking from the front is rare (consumers take all at once) and bounded.
        self.events: list[Event] = []
        self.waiter: asyncio.Future[None] | None = None
        # A tuple: a channel is in one group or a few, and an empty set alone is 216 bytes.
        self.groups: tuple[str, ...] = ()
        self.max_rate: float | None = None  # paced: numbered events at most this often per group

    def put(self, event: Event) -> None:
        """Queue an event, waking its consumer only if the queue was empty (once per batch)."""
        self.events.append(event)
        if len(self.events) == 1:
            if self.on_queued is not None:
                self.on_queued()
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(None)

    def take_all(self) -> list[Event]:
        events, self.events = self.events, []
        return events


class Pace:
    """The paced channels of one group at one rate, the newest event held for them, and its timer."""

    __slots__ = ("conflation", "names", "timer")

    def __init__(self, max_rate: float) -> None:
        self.conflation = Conflation(max_rate)
        self.names: set[str] = set()
        self.timer: asyncio.TimerHandle | None = None


class FanoutStats:
    """What this process delivered and dropped."""

    def __init__(self) -> None:
        self.delivered = 0
        self.dropped_overflow = 0
        self.overflowed_channels = 0


class LocalFanout:
    """The channels and group memberships of one event loop (one server process, in practice)."""

    def __init__(self, stats: FanoutStats) -> None:
        self.stats = stats
        self.channels: dict[str, Channel] = {}
        self.groups: dict[str, set[str]] = {}  # every local member, paced or not
        self.paces: dict[str, dict[float, Pace]] = {}  # group -> max_rate -> its paced members
        self.lanes: dict[str, Lane] = {}  # group -> its lane (set_lane)
        self.collected: dict[str, list[Event]] = {}  # group -> events held back by collect()
        self.collected_count = 0
        self.flush_scheduled = False

    def add_channel(self, name: str, capacity: int) -> Channel:
        channel = self.channels[name] = Channel(capacity)
        return channel

    def join(self, group: str, name: str) -> bool:
        """Add channel ``name`` to ``group``; True if it is the group's first local member."""
        channel = self.channels.get(name)
        if channel is None:
            raise ValueError(f"group_add() takes channels created in this process, not {name!r}")
        members = self.groups.setdefault(group, set())
        members.add(name)
        if group not in channel.groups:
            channel.groups += (group,)
        if channel.max_rate is not None:
            paces = self.paces.setdefault(group, {})
            pace = paces.get(channel.max_rate) or paces.setdefault(channel.max_rate, Pace(channel.max_rate))
            pace.names.add(name)
        return len(members) == 1

    def leave(self, group: str, name: str) -> bool:
        """Remove channel ``name`` from ``group``; True if the group has no local member left."""
        members = self.groups.get(group)
        if not members or name not in members:
            return False
        members.discard(name)
        channel = self.channels.get(name)
        if channel is not None:
            channel.groups = tuple(joined for joined in channel.groups if joined != group)
            self._unpace(group, name, channel)
        if members:
            return False
        del self.groups[group]
        return True

    def forget(self, name: str) -> list[str]:
        """Drop a channel and its memberships; return the groups that have no local member left."""
        channel = self.channels.pop(name, None)
        if channel is None:
            return []
        emptied = []
        for group in channel.groups:
            self._unpace(group, name, channel)
            members = self.groups.get(group)
            if members is not None:
                members.discard(name)
                if not members:
                    del self.groups[group]
                    emptied.append(group)
        return emptied

    def _unpace(self, group: str, name: str, channel: Channel) -> None:
        paces = self.paces.get(group)
        pace = paces.get(channel.max_rate) if paces is not None and channel.max_rate is not None else None
        if paces is None or pace is None:
            return
        pace.names.discard(name)
        if not pace.names:
            if pace.timer is not None:
                pace.timer.cancel()
            del paces[channel.max_rate]  # type: ignore[arg-type]
            if not paces:
                del self.paces[group]

    def collect(self, group: str, event: Event, more_waiting: bool) -> None:
        """Called by the reader with each group event: delivered now, or, while ``more_waiting``, held
        back (at most ``COLLECT_EVENTS``) to be delivered with what follows, each group's in order.

        Held events are delivered at the latest when the reader next waits (a callback scheduled on
        the loop), and before anything sent to one channel (``flush``), which keeps order.
        """
        self.collected.setdefault(group, []).append(event)
        self.collected_count += 1
        if more_waiting and self.collected_count < COLLECT_EVENTS:
            if not self.flush_scheduled:
                self.flush_scheduled = True
                asyncio.get_running_loop().call_soon(self.flush)
            return
        self.flush()

    def flush(self) -> None:
        """Deliver the events ``collect`` held back: one run per group."""
        self.flush_scheduled = False
        if not self.collected:
            return
        collected, self.collected, self.collected_count = self.collected, {}, 0
        for group, events in collected.items():
            self.deliver_to_group(group, events)

    def set_lane(self, group: str, lane: Lane | None) -> None:
        """Give ``group`` a lane, or take it away (None)."""
        if lane is None:
            self.lanes.pop(group, None)
        else:
            self.lanes[group] = lane

    def deliver_to_group(self, group: str, events: Events) -> None:
        """Hand ``events`` (in order) to every local member of ``group``, paced members at their pace:
        first to the group's lane, if it has one, then to the members it did not take them for."""
        everyone = self.groups.get(group)
        if not everyone:
            return
        lane = self.lanes.get(group)
        taken = lane(events) if lane is not None else None
        members: Collection[str] = everyone
        if taken:
            self.stats.delivered += len(taken) * len(events)
            members = everyone - taken
        paces = self.paces.get(group)
        if paces is None:
            self.deliver(members, events)
            return
        # Made here, not kept: a second set of every member would cost each idle connection bytes more.
        unpaced = set(members).difference(*(pace.names for pace in paces.values()))
        for event in events:  # rare: a group with paced members takes its events one at a time
            if "seq" not in event:  # only numbered (data) events are paced
                self.deliver(members, (event,))
                continue
            self.deliver(unpaced, (event,))
            now = asyncio.get_running_loop().time()
            for pace in paces.values():
                if pace.conflation.admit(group, event, now):
                    self.deliver(pace.names, (event,))
                elif pace.timer is None:
                    self._schedule(group, pace)

    def _schedule(self, group: str, pace: Pace) -> None:
        due = pace.conflation.next_release()
        if due is not None:
            pace.timer = asyncio.get_running_loop().call_at(due, self._release, group, pace)

    def _release(self, group: str, pace: Pace) -> None:
        """Called when a pace's held event is due: hand it to the pace's channels."""
        pace.timer = None
        for _, event in pace.conflation.release(asyncio.get_running_loop().time()):
            self.deliver(pace.names, (event,))
        # A timer may fire a little before its time (the loop's clock resolution): then try again.
        if pace.names:
            self._schedule(group, pace)

    def deliver(self, names: Iterable[str], events: Events) -> None:
        """Hand ``events`` to each channel: offered at once if it is idle and takes them, else queued.

        This loop runs once per member for every event the process receives: it is the server's
        hot path, and a consumer that takes the events directly writes them to its socket from here.
        """
        channels = self.channels
        delivered = 0
        for name in names:
            channel = channels.get(name)
            if channel is None:
                continue
            delivered += 1
            if not channel.events and channel.direct is not None:
                try:
                    if channel.direct(events):
                        continue
                except Exception:  # a consumer's bug must not stop delivery to everyone else
                    logger.exception("Direct delivery to %s failed; queueing instead", name)
                    channel.direct = None
            for event in events:
                if len(channel.events) >= channel.capacity:
                    self._overflow(name, channel)
                channel.put(event)
        self.stats.delivered += delivered * len(events)

    def _overflow(self, name: str, channel: Channel) -> None:
        # Until its consumer takes the overflow event, further drops are added to it, and not logged again.
        first = channel.events[0]
        before = first["dropped"] if first.get("type") == OVERFLOW_EVENT else 0
        dropped = sum(1 for event in channel.events if event.get("type") != OVERFLOW_EVENT)
        channel.events = [{"type": OVERFLOW_EVENT, "dropped": before + dropped}]
        self.stats.dropped_overflow += dropped
        if not before:
            self.stats.overflowed_channels += 1
            logger.warning(
                "Channel %s fell %d events behind; dropped them and told its consumer", name, dropped
            )
