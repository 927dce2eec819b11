"""Conflation: a client that asked for ``max_rate=N`` gets at most N frames per second of each topic.

Between two frames it may send, a topic's newer frames replace each other: when the next is due the
client gets the latest, never a backlog (Lightstreamer and Centrifugo call this conflation; it suits
values that are states, like prices and gauges, over slow links). Replayed history (``history=``,
``since=``) is not conflated.

On this project's layer the pacing happens once per process for every (topic, rate) its clients ask
for (``echo.layer.fanout``): a message left out costs nothing per client, and those clients' streams accept
seqs that skip forward (``TopicStreams(skips=True)``). Other layers cannot pace: their clients get
every frame, and a warning frame saying so.
"""

from __future__ import annotations

from typing import Any


class Conflation:
    """Pacing: when each topic may next send, and its newest frame (a layer event) held till then."""

    __slots__ = ("due", "held", "interval")

    def __init__(self, max_rate: float) -> None:
        self.interval = 1.0 / max_rate
        self.due: dict[str, float] = {}  # group -> the time its next frame may go out
        self.held: dict[str, Any] = {}  # group -> its newest frame (text or layer event) not sent yet

    def admit(self, group: str, text: Any, now: float) -> bool:
        """True if ``text`` may go out now; else it is held as the group's newest (dropping an older one)."""
        if now >= self.due.get(group, 0.0):
            self.due[group] = now + self.interval
            self.held.pop(group, None)
            return True
        self.held[group] = text
        return False

    def release(self, now: float) -> list[tuple[str, Any]]:
        """The held frames that are due at ``now`` as (group, frame); they count as sent."""
        ready = [group for group in self.held if now >= self.due[group]]
        for group in ready:
            self.due[group] = now + self.interval
        return [(group, self.held.pop(group)) for group in ready]

    def next_release(self) -> float | None:
        """When the next held frame is due, or None if none is held."""
        return min((self.due[group] for group in self.held), default=None)
