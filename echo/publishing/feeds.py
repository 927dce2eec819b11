"""Data sources for ``push_data``: plain iterators of ``{series: number}`` that know nothing of Channels.

Each source is an infinite iterator; the caller decides the pace. A line of text (``--source stdin``)
is parsed by ``echo.protocol.parse_message`` (values, or a JSON event), as the HTTP publish API's body is.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator

import psutil

Values = dict[str, float]

# The topic each source publishes to unless ``--topic`` says otherwise.
DEFAULT_TOPICS = {
    "random-walk": "prices",
    "sine": "sine",
    "system": "system",
    "stdin": "stdin",
}


def random_walk(start: float = 100.0, volatility: float = 0.002, seed: int | None = None) -> Iterator[Values]:
    """A fluctuating price: a geometric random walk, like a stock ticker, rounded to cents."""
    rng = random.Random(seed)  # noqa: S311 - a simulation, not cryptography
    price = start
    while True:
        price *= math.exp(rng.gauss(0.0, volatility))
        yield {"price": round(price, 2)}


def sine(step_seconds: float, period_seconds: float = 10.0) -> Iterator[Values]:
    """Three sine waves a third of a period apart, sampled every ``step_seconds``: smooth on a chart."""
    step = 0
    while True:
        angle = 2 * math.pi * step * step_seconds / period_seconds
        yield {
            "a": round(math.sin(angle), 6),
            "b": round(math.sin(angle + 2 * math.pi / 3), 6),
            "c": round(math.sin(angle + 4 * math.pi / 3), 6),
        }
        step += 1


def system() -> Iterator[Values]:
    """This machine's CPU % (since the previous sample), memory % used, and 1-minute load average."""
    psutil.cpu_percent(interval=None)  # the first reading is meaningless; it starts the interval
    while True:
        yield {
            "cpu": psutil.cpu_percent(interval=None),
            "memory": psutil.virtual_memory().percent,
            "load": os.getloadavg()[0],
        }
