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


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("42\n", {"value": 42}),
        ("-1.5e3", {"value": -1500.0}),
        ('{"cpu": 12.5, "mem": 40}', {"cpu": 12.5, "mem": 40}),
        ('  {"x": 0}  ', {"x": 0}),
    ],
)
def test_parse_line_accepts_a_number_or_an_object_of_numbers(line: str, expected: dict) -> None:
    assert feeds.parse_line(line) == expected


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("", "empty"),
        ("hello", "not a number or a JSON object"),
        ("[1, 2]", "not a number or a JSON object"),
        ("true", "not a number or a JSON object"),
        ('"12"', "not a number or a JSON object"),
        ('{"x": "12"}', "'x' is not a finite number"),
        ('{"x": true}', "'x' is not a finite number"),
        ("NaN", "not a finite number"),
        ('{"x": Infinity}', "not a finite number"),
    ],
)
def test_parse_line_rejects_anything_else_with_a_reason(line: str, reason: str) -> None:
    with pytest.raises(feeds.BadLine, match=reason):
        feeds.parse_line(line)


def test_every_source_has_a_valid_default_topic() -> None:
    from echo.protocol import validate_topic

    assert set(feeds.DEFAULT_TOPICS) == {"random-walk", "sine", "system", "stdin"}
    for topic in feeds.DEFAULT_TOPICS.values():
        validate_topic(topic)
