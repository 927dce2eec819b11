"""Conflation: a client that asked for ``max_rate=N`` gets at most N frames per second of each topic.

Between two frames it may send, a topic's newer frames replace each other: when the next is due the
client gets the latest, never a backlog (Lightstreamer and Centrifugo call this conflation; it suits
values that are states, like prices and gauges, over slow links). Frames left out still count as seen
(``TopicStreams``), so a left-out frame is not a hole to catch up on; a frame the layer never
delivered still is. Replayed history (``history=``, ``since=``) is not conflated.
"""

from __future__ import annotations


class Conflation:
    """One connection's pacing: when each topic may next send, and its newest frame held till then."""

    __slots__ = ("due", "held", "interval")

    def __init__(self, max_rate: float) -> None:
        self.interval = 1.0 / max_rate
        self.due: dict[str, float] = {}  # group -> the time its next frame may go out
        self.held: dict[str, str] = {}  # group -> its newest frame not sent yet

    def admit(self, group: str, text: str, now: float) -> bool:
        """True if ``text`` may go out now; else it is held as the group's newest (dropping an older one)."""
        if now >= self.due.get(group, 0.0):
            self.due[group] = now + self.interval
            self.held.pop(group, None)
            return True
        self.held[group] = text
        return False

    def release(self, now: float) -> list[tuple[str, str]]:
        """The held frames that are due at ``now`` as (group, frame); they count as sent."""
        ready = [group for group in self.held if now >= self.due[group]]
        for group in ready:
            self.due[group] = now + self.interval
        return [(group, self.held.pop(group)) for group in ready]

    def hold_again(self, group: str, text: str) -> None:
        """Put back a released frame that could not be written, unless a newer one is held already."""
        self.held.setdefault(group, text)

    def next_release(self) -> float | None:
        """When the next held frame is due, or None if none is held."""
        return min((self.due[group] for group in self.held), default=None)
