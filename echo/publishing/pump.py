"""Drives a data source into the publisher: paced by a rate, or line by line from a stream.

The loop behind ``manage.py push_data``. A publish that fails because Redis is unreachable is retried
(after 0.5 s, then every second, so that data flows again within a second of Redis coming back) until
it goes through, with a log line per attempt at first and then one every ``REPORT_EVERY`` seconds;
every attempt carries the message's one idempotency key, so a publish whose answer was lost (Redis ran
it, then the connection dropped) is not published a second time by its retry;
ticks missed meanwhile are skipped rather than sent in a burst, so the stream resumes at its normal rate.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import IO

from redis.exceptions import RedisError

from echo.layer.redis_link import raise_if_cancelling, redact_url
from echo.protocol import Event, FrameError, Position, parse_message
from echo.publishing.broadcast import Publisher, new_idempotency_key
from echo.publishing.feeds import Values

logger = logging.getLogger(__name__)

RETRY_FIRST = 0.5
RETRY_CAP = 1.0
REPORT_EVERY = 10.0


async def paced(source: Iterator[Values], rate: float) -> AsyncIterator[Values]:
    """Yield from ``source`` at ``rate`` per second, on a fixed schedule that does not drift."""
    interval = 1.0 / rate
    next_tick = time.monotonic()
    for values in source:
        delay = next_tick - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        yield values
        # After a stall (Redis outage, busy machine), start afresh instead of catching up in a burst.
        next_tick = max(next_tick + interval, time.monotonic())


async def lines_of(stream: IO[str]) -> AsyncIterator[Values | Event]:
    """Yield the message of each good line of ``stream`` as it arrives (values, or a JSON event
    ``{"event": NAME, "data": ANY}``: ``echo.protocol.parse_message``); report and skip bad ones.

    Lines are read on a daemon thread, so Ctrl-C never waits for a blocked read.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=1000)

    def read() -> None:
        try:
            for line in stream:
                asyncio.run_coroutine_threadsafe(queue.put(line), loop).result()
            asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()
        except (RuntimeError, concurrent.futures.CancelledError):
            return  # the loop stopped (Ctrl-C, SIGTERM) while lines were still arriving: nothing to do

    threading.Thread(target=read, name="push-data-stdin", daemon=True).start()
    number = 0
    while (line := await queue.get()) is not None:
        number += 1
        try:
            yield parse_message(line)
        except FrameError as exc:  # BadValues, BadEvent
            logger.warning("stdin line %d skipped: %s", number, exc)


class Pump:
    """Publishes every message from a source on one topic, counting what went out and what was skipped.

    A message is a feed's values, or a JSON event from stdin; one whose data is past the limits
    (``MESSAGE_MAX_BYTES``, depth, keys) is skipped with a log line, as a bad line is."""

    def __init__(
        self,
        publisher: Publisher,
        topic: str,
        redis_url: str,
        on_published: Callable[[str, Position], None] | None = None,
    ) -> None:
        self.publisher = publisher
        self.topic = topic
        self.redis_url = redact_url(redis_url)
        self.on_published = on_published
        self.sent = 0
        self.skipped = 0
        self.last: Position | None = None

    async def run(self, values: AsyncIterator[Values | Event], count: int | None = None) -> None:
        """Publish until ``values`` ends or ``count`` messages have been sent."""
        if count is not None and count <= 0:
            return
        async for item in values:
            # Ctrl-C cancels this task, but a cancellation that lands as a Redis call completes can
            # be swallowed on its way out (asyncio.wait_for before Python 3.12): check each time.
            raise_if_cancelling()
            if await self._publish_until_sent(item):
                self.sent += 1
                if count is not None and self.sent >= count:
                    return

    async def _publish_until_sent(self, message: Values | Event) -> bool:
        delay = RETRY_FIRST
        failing_since: float | None = None
        attempts = 0
        next_report = 0.0
        key = new_idempotency_key()
        while True:
            try:
                self.last = await self._publish(message, key)
            except FrameError as exc:
                self.skipped += 1
                logger.warning("Skipped a message that cannot be sent: %s", exc)
                return False
            except (RedisError, OSError) as exc:
                now = time.monotonic()
                failing_since = failing_since or now
                attempts += 1
                if attempts <= 2 or now >= next_report:  # the backoff, then a reminder now and then
                    logger.warning(
                        "Redis at %s unreachable (%s); retrying in %.1f s",
                        self.redis_url,
                        _reason(exc),
                        delay,
                    )
                    next_report = now + REPORT_EVERY
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_CAP)
                continue
            if self.on_published is not None:
                self.on_published(self.topic, self.last)
            if failing_since is not None:
                logger.warning(
                    "Redis at %s reachable again after %.1f s; publishing resumed",
                    self.redis_url,
                    time.monotonic() - failing_since,
                )
            return True

    async def _publish(self, message: Values | Event, key: str) -> Position:
        if isinstance(message, Event):
            return await self.publisher.publish(
                self.topic, message.data, idempotency_key=key, event=message.name
            )
        return await self.publisher.publish(self.topic, message, idempotency_key=key)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def stdin_lines() -> AsyncIterator[Values | Event]:
    """The message of each good line of standard input."""
    return lines_of(sys.stdin)
