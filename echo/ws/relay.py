"""Pushed frames on their way to one client: in stream order, with what it missed caught up from history.

On connect the client gets recent history (or exactly what it missed, with ``since``), then live
frames, with no gap and no duplicate between the two (``echo.ws.streams``). A live frame that is not
simply the next of its stream (a hole before it, another epoch) makes the client catch up from history
first, which holds that frame too: it is stored before it is published.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from redis.exceptions import RedisError

from echo.errors import CLOSE_TRY_AGAIN_LATER, ClientError
from echo.layer.capabilities import Capabilities
from echo.ops import metrics
from echo.ops.metrics import hot_counts
from echo.protocol import RELAY_EVENT, group_topic, reset_frame, topic_group, warning_frame
from echo.ws.lanes import Lanes, continuation, lanes_of
from echo.ws.sending import Sender
from echo.ws.streams import TopicStreams, Verdict
from echo.ws.subscription import Subscription

logger = logging.getLogger(__name__)

Dispatch = Callable[[dict[str, Any]], Awaitable[None]]


class Runs:
    """The frame of the run of events being fanned out: joined once, for every connection it is
    offered to (the layer hands each the same list object, in one synchronous loop)."""

    __slots__ = ("events", "joined")

    def __init__(self) -> None:
        self.events: Sequence[Mapping[str, Any]] = ()
        self.joined: str | None = None

    def text(self, events: Sequence[Mapping[str, Any]]) -> str | None:
        """The events' texts newline-joined, if they are consecutive numbered frames of one stream
        (what a client can be sent in one go) and fit in one batch; else None."""
        if events is not self.events:
            self.events, self.joined = events, self._join(events)
        return self.joined

    @staticmethod
    def _join(events: Sequence[Mapping[str, Any]]) -> str | None:
        first = events[0]
        if "seq" not in first:
            return None
        run = continuation(events, first["group"], first["epoch"], first["seq"] - 1, unnumbered=False)
        return run[0] if run is not None else None


runs = Runs()  # one event loop per server process: one run fanned out at a time


class Relay:
    """The topics of one connection: where the client stands in each, and what it is sent next."""

    __slots__ = (
        "channel",
        "client",
        "features",
        "groups",
        "history_unavailable",
        "in_lanes",
        "lanes",
        "layer",
        "sender",
        "streams",
        "wants",
    )

    def __init__(
        self, layer: Any, features: Capabilities, subscription: Subscription, sender: Sender, client: Any
    ) -> None:
        self.layer, self.features, self.sender, self.client = layer, features, sender, client
        self.groups = tuple(topic_group(topic) for topic in subscription.topics)
        self.wants = subscription  # its history and max_rate
        self.streams: TopicStreams | None = None
        self.history_unavailable = False  # the last attempt to read history failed
        self.channel = ""
        self.lanes: Lanes | None = None  # where it can be written to with others (echo.ws.lanes)
        self.in_lanes: tuple[str, ...] = ()  # the groups whose lane it is in (no set: 200 bytes idle)

    async def start(self, channel: str) -> list[str]:
        """Called on connect, before joining the groups: pace the channel if asked, and return the
        frames the client is owed of every topic."""
        paced = self.wants.max_rate is not None and self.features.attach  # other layers cannot pace
        if paced:
            self.layer.pace(channel, self.wants.max_rate)  # once per process per topic and rate
        since = {topic_group(topic): position for topic, position in self.wants.since.items()}
        self.streams = TopicStreams(self.wants.history, since, skips=paced)
        self.channel = channel
        if self.sender.direct_writer is not None and not paced:
            self.lanes = lanes_of(self.layer)
            self.sender.on_closing = self.leave_lanes
        frames = await self.catch_up_all()
        if self.wants.max_rate is not None and not paced:
            frames.append(warning_frame("no_max_rate", "this server's channel layer cannot pace frames"))
        return frames

    def offer(self, events: Sequence[Mapping[str, Any]]) -> bool:
        """From the layer's reader, with nothing else pending: write pushed frames now if they simply
        continue their stream and the socket takes them; True if handled (written, or already sent).

        The server's hot path, once per connection for every message. Several events (a run of one
        group's, ``echo.layer.fanout``) go out newline-joined in one frame, made once for every
        connection (``runs``); anything unusual (a hole, a duplicate within a run, another kind of
        event) returns False, and ``relay`` deals with it in order.
        """
        sender, streams, first = self.sender, self.streams, events[0]
        if sender.closing or sender.direct is None or first["type"] != RELAY_EVENT:
            return False
        cursor = None
        if streams is not None and "seq" in first:  # a plain layer's frames are not numbered
            cursor = streams.next_in(first["group"], first["epoch"], first["seq"])
            if cursor is None:  # already sent (dropped here), or a hole or new epoch: relay() recovers
                verdict = streams.check(first["group"], first["epoch"], first["seq"])
                return verdict is Verdict.DUPLICATE and len(events) == 1
        text = first["text"] if len(events) == 1 else runs.text(events)
        if text is None or not sender.direct(text):
            return False
        if cursor is not None:
            last = events[-1]
            cursor.epoch, cursor.seq = last["epoch"], last["seq"]
            hot_counts.messages_relayed += len(events)
        if self.lanes is not None and streams is not None and "group" in first:
            position = streams.position(first["group"])  # presence frames say their group too
            if position is not None:
                self.join_lane(first["group"], *position)
        hot_counts.frames_out += 1
        return True

    def join_lane(self, group: str, epoch: str | None, seq: int) -> None:
        """Called after a frame of ``group`` was written directly: join the group's lane, if the
        client stands where the lane does (or there is none yet) and its socket takes frames."""
        assert self.lanes is not None and self.sender.direct_writer is not None
        lane = self.lanes.get(group)
        if group in self.in_lanes or (lane is not None and (lane.epoch, lane.seq) != (epoch, seq)):
            return
        writer = self.sender.direct_writer(self.leave_lanes)
        if writer is not None and self.lanes.join(group, self.channel, self, writer, (epoch, seq)):
            self.in_lanes += (group,)

    def left_lane(self, group: str, epoch: str | None, seq: int) -> None:
        """Called by a lane that let this connection go: it was sent up to (``epoch``, ``seq``)."""
        self.in_lanes = tuple(other for other in self.in_lanes if other != group)
        if self.streams is not None:
            self.streams.advance(group, epoch, seq)

    def leave_lanes(self) -> None:
        """Leave every lane, taking each one's position: called when the socket stops taking frames,
        an event is queued for the connection, it starts closing, or it ends."""
        if not self.in_lanes or self.lanes is None:
            return
        for group in self.in_lanes:
            lane = self.lanes.get(group)
            if lane is not None:
                self.left_lane(group, *lane.remove(self.channel))
        self.in_lanes = ()

    async def relay(self, events: list[dict[str, Any]], dispatch: Dispatch) -> None:
        """Layer events in order: pushed frames newline-joined, in as few frames as can be; any other
        event to ``dispatch``. Raises ``ClientError`` if a hole cannot be filled (history unreadable)."""
        texts: list[str] = []
        for event in events:
            if event["type"] != RELAY_EVENT:
                await self.sender.send_batched(texts)  # what came before another event goes out first
                texts = []
                await dispatch(event)
                continue
            verdict = self.verdict(event)
            if verdict is Verdict.SEND:
                self.relayed(event)
                texts.append(event["text"])
            elif verdict is Verdict.RECOVER:
                await self.sender.send_batched(texts)
                texts = []
                await self.sender.send_batched(await self.catch_up(event["group"]))
                if self.history_unavailable:  # sending it would leave a hole: reconnect with since
                    raise ClientError("history_unavailable", "history cannot be read", CLOSE_TRY_AGAIN_LATER)
        await self.sender.send_batched(texts)

    def verdict(self, event: dict[str, Any]) -> Verdict:
        """What to do with a pushed frame: frames that are not numbered (presence, plain layers) are sent."""
        if "seq" not in event or self.streams is None:
            return Verdict.SEND
        return self.streams.check(event["group"], event["epoch"], event["seq"])

    def relayed(self, event: dict[str, Any]) -> None:
        """Record that a pushed frame is on its way to the client."""
        if "seq" in event and self.streams is not None:
            self.streams.advance(event["group"], event["epoch"], event["seq"])
            hot_counts.messages_relayed += 1

    async def catch_up_all(self) -> list[str]:
        """The frames the client is owed of every topic it follows, topic after topic."""
        return [frame for group in self.groups for frame in await self.catch_up(group)]

    async def catch_up(self, group: str) -> list[str]:
        """The frames the client is owed of ``group`` from history (``TopicStreams.catch_up``).

        If Redis cannot be read, returns none and leaves the client's position as it is: the
        layer's resync catches up once Redis is back, and a live frame that finds a hole first
        closes the connection with 1013 (``relay``). On a layer without history, says so instead.
        """
        assert self.streams is not None, "start() first"
        if not self.features.numbered:
            return self._without_history(group)
        try:
            caught_up = await self.streams.catch_up(group, self.layer.group_history)
        except (RedisError, OSError, TimeoutError) as exc:
            logger.warning(
                "History of %r unavailable for %s (%s); it is sent when Redis is back",
                group_topic(group),
                self.client,
                exc,
            )
            self.history_unavailable = True
            return []
        self.history_unavailable = False
        metrics.inc("ws_messages_replayed_total", amount=caught_up.replayed)
        if caught_up.reset:
            metrics.inc("ws_resets_total")
        return caught_up.frames

    def _without_history(self, group: str) -> list[str]:
        assert self.streams is not None
        topic = group_topic(group)
        frames = []
        if self.streams.position(group) is not None:
            frames.append(reset_frame(topic, None, "this server's channel layer keeps no history"))
        if self.wants.history and group == self.groups[0]:
            frames.append(warning_frame("no_history", "this server's channel layer keeps no history"))
        return frames
