"""The layer's pacing (``max_rate``): one held event and one timer per group and rate, for every client."""

from __future__ import annotations

import asyncio

from echo.layer.fanout import FanoutStats, LocalFanout
from tests.helpers.processes import timeout


def numbered(seq: int) -> dict:
    return {"type": "relay.frame", "text": f"frame {seq}", "group": "topic.a", "epoch": "e", "seq": seq}


async def test_paced_channels_get_the_first_frame_then_the_newest_when_due_and_others_every_frame() -> None:
    fanout = LocalFanout(FanoutStats())
    got: dict[str, list[int]] = {"fast": [], "slow-1": [], "slow-2": []}
    released = asyncio.Event()

    def receiver(name: str):
        def direct(events: list[dict]) -> bool:
            (event,) = events  # a paced group's events are offered one at a time
            got[name].append(event["seq"])
            if name == "slow-2" and len(got[name]) == 2:
                released.set()
            return True

        return direct

    for name, rate in (("fast", None), ("slow-1", 10.0), ("slow-2", 10.0)):
        channel = fanout.add_channel(name, capacity=100)
        channel.max_rate = rate
        channel.direct = receiver(name)
        fanout.join("topic.a", name)
    assert set(fanout.paces["topic.a"]) == {10.0}  # one pace for both slow channels
    for seq in range(1, 6):
        fanout.deliver_to_group("topic.a", [numbered(seq)])
    assert got["fast"] == [1, 2, 3, 4, 5]
    assert got["slow-1"] == got["slow-2"] == [1]
    await asyncio.wait_for(released.wait(), timeout(5))
    assert got["slow-1"] == got["slow-2"] == [1, 5]  # the newest, once; 2-4 cost them nothing
    # The last paced member leaving removes the pace and its timer.
    fanout.deliver_to_group("topic.a", [numbered(6)])
    fanout.leave("topic.a", "slow-1")
    fanout.forget("slow-2")
    assert "topic.a" not in fanout.paces
    assert fanout.groups["topic.a"] == {"fast"}
