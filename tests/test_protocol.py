"""The wire format's parsers, alone: the text of one message's values (a stdin line, an HTTP body)."""

from __future__ import annotations

import pytest

from echo.protocol import BadValues, parse_values


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("42\n", {"value": 42}),
        ("-1.5e3", {"value": -1500.0}),
        ('{"cpu": 12.5, "mem": 40}', {"cpu": 12.5, "mem": 40}),
        ('  {"x": 0}  ', {"x": 0}),
    ],
)
def test_parse_values_accepts_a_number_or_an_object_of_numbers(line: str, expected: dict) -> None:
    assert parse_values(line) == expected


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
def test_parse_values_rejects_anything_else_with_a_reason(line: str, reason: str) -> None:
    with pytest.raises(BadValues, match=reason):
        parse_values(line)


def test_a_frame_is_measured_in_utf8_bytes_encoding_only_when_characters_cannot_tell() -> None:
    from echo.ws.limits import frame_bytes

    assert frame_bytes("a" * 10, 100) == 10  # 10 characters of at most 4 bytes: within 100 whatever
    assert frame_bytes("é" * 30, 100) == 60  # could be over: counted in bytes
    assert frame_bytes("é" * 101, 100) == 101  # over in characters already: no need to encode
    assert frame_bytes(b"\xff" * 7, 100) == 7
