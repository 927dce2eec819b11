"""The data sources, alone: plain iterators with no Channels or Redis behind them."""

from __future__ import annotations

import itertools
import math

import pytest

from echo.protocol import validate_values
from echo.publishing import feeds


def take(source, n):
    return list(itertools.islice(source, n))


def test_random_walk_is_a_positive_price_that_moves() -> None:
    prices = [v["price"] for v in take(feeds.random_walk(seed=1), 200)]
    assert all(p > 0 for p in prices)
    assert len(set(prices)) > 50
    assert max(abs(b / a - 1) for a, b in itertools.pairwise(prices)) < 0.05


def test_sine_has_three_phases_within_unit_range() -> None:
    samples = take(feeds.sine(step_seconds=0.1), 100)
    assert all(set(v) == {"a", "b", "c"} for v in samples)
    assert all(-1 <= x <= 1 for v in samples for x in v.values())
    # Three phases a third of a period apart always sum to zero.
    assert all(math.isclose(sum(v.values()), 0, abs_tol=1e-5) for v in samples)
    assert samples[0]["a"] == 0 and samples[25]["a"] == pytest.approx(1, abs=1e-6)


def test_system_reports_cpu_memory_and_load() -> None:
    for values in take(feeds.system(), 2):
        assert set(values) == {"cpu", "memory", "load"}
        assert 0 <= values["cpu"] <= 100 and 0 < values["memory"] <= 100 and values["load"] >= 0
        validate_values(values)


def test_every_source_has_a_valid_default_topic() -> None:
    from echo.protocol import validate_topic

    assert set(feeds.DEFAULT_TOPICS) == {"random-walk", "sine", "system", "stdin"}
    for topic in feeds.DEFAULT_TOPICS.values():
        validate_topic(topic)
