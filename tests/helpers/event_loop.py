"""Stepping a real event loop in a test, without sleeping."""

from __future__ import annotations

import asyncio


async def loop_turns(count: int = 3) -> None:
    """Let the event loop run everything that is ready, ``count`` times over."""
    loop = asyncio.get_running_loop()
    for _ in range(count):
        turn = loop.create_future()
        loop.call_soon(turn.set_result, None)
        await turn
