"""``manage.py push_data``: push live data to every connected browser through the Redis channel layer."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from echo.layer.redis_link import redact_url
from echo.protocol import FrameError, Position, validate_topic
from echo.publishing import feeds
from echo.publishing.broadcast import LayerNotShared, Publisher
from echo.publishing.pump import Pump, paced, stdin_lines

MAX_RATE = 10_000.0


def positive_rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of messages per second") from None
    if not 0 < rate <= MAX_RATE:
        raise argparse.ArgumentTypeError(f"{text} is out of range: use more than 0 and at most {MAX_RATE:g}")
    return rate


def positive_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text} is not at least 1")
    return count


def topic_name(text: str) -> str:
    try:
        return validate_topic(text)
    except FrameError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class Command(BaseCommand):
    help = (
        "Push live data to every connected page through the Redis channel layer, until Ctrl-C or "
        "--count messages. Sources: random-walk (a price), sine (three waves), system (CPU %, memory %, "
        "load), stdin (per line: one number, a JSON object of numbers, or a JSON event "
        '{"event": NAME, "data": ANY}). With -v 2, prints '
        "'published TOPIC EPOCH SEQ' for each message."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--source", choices=sorted(feeds.DEFAULT_TOPICS), default="random-walk")
        parser.add_argument(
            "--rate", type=positive_rate, default=10.0, help="messages per second (ignored for stdin)"
        )
        parser.add_argument("--count", type=positive_count, default=None, help="stop after this many")
        parser.add_argument("--topic", type=topic_name, default=None, help="default: one per source")

    def handle(self, *args: Any, **options: Any) -> None:
        source: str = options["source"]
        topic: str = options["topic"] or feeds.DEFAULT_TOPICS[source]
        # This project's settings name it; in another project the channel layer's config does.
        redis_url = getattr(settings, "REDIS_URL", "") or "the channel layer's Redis"
        try:
            pump = Pump(
                Publisher(),
                topic,
                redis_url,
                self._print_published if options["verbosity"] > 1 else None,
            )
        except LayerNotShared as exc:
            raise CommandError(f"push_data cannot work: {exc}") from None
        logging.getLogger("echo").setLevel(logging.INFO)
        pace = "as lines arrive" if source == "stdin" else f"at {options['rate']:g}/s"
        self.stderr.write(
            f"Pushing {source} to topic '{topic}' {pace} through {redact_url(redis_url)} (Ctrl-C to stop)"
        )
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(self._run(pump, source, options["rate"], options["count"]))
        last = f" (last seq {pump.last.seq}, epoch {pump.last.epoch})" if pump.last else ""
        self.stderr.write(
            f"Stopped after {pump.sent} messages{last}"
            + (f", {pump.skipped} skipped" if pump.skipped else "")
        )

    def _print_published(self, topic: str, position: Position) -> None:
        """With ``-v 2``: one line per message on stdout, for programs that check what was published."""
        self.stdout.write(f"published {topic} {position.epoch} {position.seq}")
        self.stdout.flush()

    async def _run(self, pump: Pump, source: str, rate: float, count: int | None) -> None:
        # SIGTERM (docker stop, systemd) ends the run like Ctrl-C does, with the same summary.
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        if source == "stdin":
            values = stdin_lines()
        elif source == "random-walk":
            values = paced(feeds.random_walk(), rate)
        elif source == "sine":
            values = paced(feeds.sine(step_seconds=1.0 / rate), rate)
        else:
            values = paced(feeds.system(), rate)
        with contextlib.suppress(asyncio.CancelledError):
            await pump.run(values, count)
