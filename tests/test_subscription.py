"""Parsing what a client asks for in its URL: every bad value is refused with a code, never crashes."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from echo.errors import ClientError
from echo.protocol import TOPIC_PATTERN, Position
from echo.ws.subscription import Subscription, parse_subscription


def parse(query: str | bytes) -> Subscription:
    raw = query.encode() if isinstance(query, str) else query
    return parse_subscription(raw, default_history=600, max_history=5000)


def test_defaults_to_the_default_topic_and_history() -> None:
    assert parse("") == Subscription(topics=("prices",), history=600, since={})


def test_reads_topics_history_and_since() -> None:
    sub = parse("topics=prices,system&history=10&since=prices:1041:3f9a2c1b,system:77:0c1d2e3f")
    assert sub == Subscription(
        topics=("prices", "system"),
        history=10,
        since={"prices": Position("3f9a2c1b", 1041), "system": Position("0c1d2e3f", 77)},
    )


def test_a_since_without_an_epoch_is_read_as_an_unknown_epoch() -> None:
    assert parse("since=prices:12").since == {"prices": Position(None, 12)}


def test_repeated_topics_are_kept_once_in_order() -> None:
    assert parse("topics=b,a,b").topics == ("b", "a")


def test_unknown_parameters_are_ignored() -> None:
    assert parse("topics=x&foo=bar").topics == ("x",)


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("topics=", "bad_topics"),
        ("topics=Prices", "bad_topics"),
        ("topics=a,,b", "bad_topics"),
        ("topics=-a", "bad_topics"),
        ("topics=" + "x" * 49, "bad_topics"),
        ("topics=a%00", "bad_topics"),
        ("topics=abc%0A", "bad_topics"),
        ("topics=" + ",".join(f"t{n}" for n in range(17)), "too_many_topics"),
        ("history=-1", "bad_history"),
        ("history=ten", "bad_history"),
        ("history=5001", "bad_history"),
        ("history=1e3", "bad_history"),
        ("history=%C2%B2", "bad_history"),
        ("since=prices:%C2%B2", "bad_since"),
        ("since=prices", "bad_since"),
        ("since=prices:-1", "bad_since"),
        ("since=prices:x", "bad_since"),
        ("since=other:1", "bad_since"),
        ("since=prices:99999999999999999", "bad_since"),
        ("since=prices:1:", "bad_since"),
        ("since=prices:1:Ab", "bad_since"),
        ("since=prices:1:a:b", "bad_since"),
        ("since=prices:1:" + "a" * 33, "bad_since"),
        ("topics=a&topics=b", "bad_query"),
        (b"topics=\xff", "bad_query"),
        ("x=" + "y" * 5000, "bad_query"),
    ],
)
def test_bad_values_are_refused_with_a_code(query: str | bytes, code: str) -> None:
    with pytest.raises(ClientError) as refused:
        parse(query)
    assert refused.value.code == code
    assert refused.value.close_code == 1008
    assert refused.value.detail


def query_of(topics: str, history: str, since: str) -> bytes:
    return f"topics={quote(topics)}&history={quote(history)}&since={quote(since)}".encode()


@given(
    st.one_of(
        st.binary(max_size=300),
        st.builds(query_of, st.text(max_size=60), st.text(max_size=12), st.text(max_size=60)),
        st.builds(
            query_of,
            st.from_regex(r"[a-z0-9,]{0,40}", fullmatch=True),
            st.from_regex(r"[0-9]{0,6}", fullmatch=True),
            st.from_regex(r"([a-z0-9]{1,5}:[0-9]{1,4},?){0,3}", fullmatch=True),
        ),
    )
)
def test_any_query_string_parses_or_is_refused_cleanly(raw: bytes) -> None:
    try:
        sub = parse(raw)
    except ClientError as error:
        assert error.code in {"bad_query", "bad_topics", "too_many_topics", "bad_history", "bad_since"}
    else:
        assert 1 <= len(sub.topics) <= 16
        assert all(TOPIC_PATTERN.fullmatch(t) for t in sub.topics)
        assert 0 <= sub.history <= 5000
        assert set(sub.since) <= set(sub.topics)
