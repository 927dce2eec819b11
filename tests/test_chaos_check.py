"""The chaos run's checker on synthetic histories: a clean one passes, and each rule catches its breach."""

from __future__ import annotations

import itertools

import pytest

from scripts.chaos_check import (
    BAD_SINCE,
    DUPLICATE,
    GAP,
    MISSED_START,
    NEEDLESS_RESET,
    NEW_EPOCH_WITHOUT_RESET,
    NOT_CONVERGED,
    UNASKED_TOPIC,
    ClientLog,
    Close,
    Connect,
    Data,
    Error,
    Published,
    Record,
    Reset,
    check,
    excerpt,
    final_positions,
)

_clock = itertools.count(1)


def tick() -> float:
    return float(next(_clock))


def connect(**since: tuple[str, int]) -> Connect:
    return Connect(tick(), since)


def data(topic: str, epoch: str | None, *seqs: int, replay: bool = False) -> list[Record]:
    return [Data(tick(), topic, epoch, seq, replay) for seq in seqs]


def reset(topic: str, epoch: str | None) -> Reset:
    return Reset(tick(), topic, epoch, "test")


def close(code: int | None) -> Close:
    return Close(tick(), code)


def published(topic: str, epoch: str, *seqs: int, publisher: str = "p1") -> list[Published]:
    return [Published(tick(), publisher, topic, epoch, seq) for seq in seqs]


def client(*records: Record | list[Record], topics: tuple[str, ...] = ("a",)) -> ClientLog:
    flat: list[Record] = []
    for item in records:
        flat.extend(item if isinstance(item, list) else [item])
    return ClientLog("c1", topics, flat)


def rules(log: ClientLog, lines: list[Published]) -> list[str]:
    return [violation.rule for violation in check([log], lines).violations]


def test_a_clean_history_through_every_kind_of_recovery_passes() -> None:
    """Live frames, a 1013 and a `since` replay, an empty-Redis reset, a reset to "no stream"."""
    lines = [
        *published("a", "e1", *range(1, 9)),
        *published("b", "f1", 1, 2, 3),
        *published("a", "e2", 1, 2, 3, 4),
        *published("a", "e3", 1, 2),
    ]
    log = client(
        connect(),
        data("a", "e1", 1, 2, 3),
        data("b", "f1", 1),
        close(1013),
        connect(a=("e1", 3), b=("f1", 1)),
        data("a", "e1", 4, 5, 6, replay=True),
        data("b", "f1", 2, replay=True),
        data("a", "e1", 7, 8),
        data("b", "f1", 3),
        close(1006),
        connect(a=("e1", 8), b=("f1", 3)),
        reset("a", "e2"),  # Redis lost epoch e1 while the client was away: e2 from its start
        data("a", "e2", 1, 2, 3, replay=True),
        data("a", "e2", 4),
        reset("a", None),  # lost again, nothing published since
        data("a", "e3", 1, 2),
        topics=("a", "b"),
    )
    result = check([log], lines)
    assert result.violations == []
    assert result.finals == {"a": ("e3", 2), "b": ("f1", 3)}
    summary = result.clients["c1"]
    assert (summary.frames, summary.replayed, summary.resets, summary.connections) == (17, 7, 2, 3)
    assert summary.closes == {1013: 1, 1006: 1}
    assert result.frames_checked == 17 and result.unrecorded == {}


def test_a_reset_to_the_epoch_the_client_is_in_is_needless() -> None:
    log = client(connect(), data("a", "e1", 1, 2), close(1001), connect(a=("e1", 2)), reset("a", "e1"))
    log.records.extend(data("a", "e1", 1, 2, 3, replay=True))
    (violation,) = check([log], published("a", "e1", 1, 2, 3)).violations
    assert violation.rule == NEEDLESS_RESET and violation.topic == "a" and violation.index == 5


def test_a_reset_to_another_epoch_or_to_none_is_not_needless() -> None:
    log = client(connect(), data("a", "e1", 1), reset("a", None), reset("a", "e2"), data("a", "e2", 1))
    assert rules(log, published("a", "e2", 1)) == []


def test_a_frame_of_another_epoch_without_a_reset_is_caught() -> None:
    log = client(connect(), data("a", "e1", 1, 2), data("a", "e2", 1, 2))
    assert rules(log, published("a", "e2", 1, 2)) == [NEW_EPOCH_WITHOUT_RESET]


def test_after_a_reset_the_frames_must_be_of_the_announced_epoch() -> None:
    log = client(connect(), data("a", "e1", 1), reset("a", "e2"), data("a", "e3", 1))
    assert rules(log, published("a", "e3", 1)) == [NEW_EPOCH_WITHOUT_RESET]


def test_a_duplicate_is_caught_and_does_not_move_the_position_back() -> None:
    log = client(connect(), data("a", "e1", 1, 2, 3, 2, 4))
    result = check([log], published("a", "e1", 1, 2, 3, 4))
    assert [v.rule for v in result.violations] == [DUPLICATE]
    assert result.violations[0].index == 4 and result.clients["c1"].final == {"a": ("e1", 4)}


def test_a_gap_is_caught_with_what_is_missing() -> None:
    log = client(connect(), data("a", "e1", 1, 2, 5, 6))
    (violation,) = check([log], published("a", "e1", *range(1, 7))).violations
    assert violation.rule == GAP and "3-4 missing" in violation.detail


def test_a_replay_that_skips_what_the_client_missed_is_a_gap() -> None:
    log = client(connect(), data("a", "e1", 1, 2), close(1013), connect(a=("e1", 2)))
    log.records.extend(data("a", "e1", 4, replay=True))
    assert rules(log, published("a", "e1", 1, 2, 3, 4)) == [GAP]


def test_an_epoch_must_start_at_seq_1_for_the_client() -> None:
    after_reset = client(connect(), data("a", "e1", 1), reset("a", "e2"), data("a", "e2", 2, 3))
    assert rules(after_reset, published("a", "e2", 1, 2, 3)) == [MISSED_START]
    fresh = client(connect(), data("a", "e1", 3, 4))
    assert rules(fresh, published("a", "e1", 1, 2, 3, 4)) == [MISSED_START]


def test_a_client_that_ends_behind_or_in_an_old_epoch_did_not_converge() -> None:
    behind = client(connect(), data("a", "e1", 1, 2))
    (violation,) = check([behind], published("a", "e1", 1, 2, 3)).violations
    assert violation.rule == NOT_CONVERGED and "e1:2" in violation.detail and "e1:3" in violation.detail
    old_epoch = client(connect(), data("a", "e1", 1, 2, 3))
    lines = [*published("a", "e1", 1, 2, 3), *published("a", "e2", 1)]
    assert rules(old_epoch, lines) == [NOT_CONVERGED]
    never = client(connect(), topics=("a", "b"))
    assert rules(never, published("b", "f1", 1)) == [NOT_CONVERGED]


def test_the_final_position_is_the_last_printed_epoch_and_frames_printed_by_no_one_count() -> None:
    # Two publishers share topic a; the second printed the newest line; a client got seq 4, which
    # its publisher published but never printed (stopped in between).
    lines = [
        *published("a", "e1", 1, 2, 3, publisher="p1"),
        *published("a", "e2", 1, publisher="p1"),
        *published("a", "e2", 2, 3, publisher="p2"),
    ]
    ahead = client(connect(), data("a", "e2", 1, 2, 3, 4))
    assert final_positions(lines) == {"a": ("e2", 3)}
    assert final_positions(lines, [ahead]) == {"a": ("e2", 4)}
    result = check([ahead], lines)
    assert result.violations == [] and result.unrecorded == {("a", "e2"): [4]}
    other = ClientLog("c2", ("a",), [connect(), *data("a", "e2", 1, 2, 3)])
    assert [(v.who, v.rule) for v in check([ahead, other], lines).violations] == [("c2", NOT_CONVERGED)]


def test_frames_of_topics_not_asked_for_and_a_wrong_since_are_caught() -> None:
    log = client(connect(), data("a", "e1", 1), data("b", "f1", 1), close(1013), connect(a=("e1", 5)))
    assert rules(log, published("a", "e1", 1)) == [UNASKED_TOPIC, BAD_SINCE, NOT_CONVERGED]


def test_a_topic_not_named_in_since_starts_afresh_on_reconnect() -> None:
    """Without a position the client asks for the whole history: its first frame is seq 1 again."""
    log = client(connect(), data("a", "e1", 1), reset("a", None), close(1001), connect())
    log.records.extend(data("a", "e2", 1, 2, replay=True))
    assert rules(log, published("a", "e2", 1, 2)) == []


@pytest.mark.parametrize("code", [1001, 1006, 1008, 1013, None])
def test_closes_and_errors_are_counted_not_judged(code: int | None) -> None:
    log = client(
        connect(), data("a", "e1", 1), Error(tick(), "rate_limited"), close(code), connect(a=("e1", 1))
    )
    result = check([log], published("a", "e1", 1))
    assert result.violations == []
    assert result.clients["c1"].closes == {code: 1} and result.clients["c1"].errors == {"rate_limited": 1}


def test_an_excerpt_shows_the_records_of_the_topic_around_a_violation() -> None:
    log = client(connect(), data("a", "e1", 1), data("b", "f1", 1), data("a", "e1", 3), topics=("a", "b"))
    (violation,) = [v for v in check([log], published("a", "e1", 1)).violations if v.rule == GAP]
    lines = excerpt(log.records, violation.index or 0, "a")
    assert len(lines) == 3 and lines[-1].startswith(">> #3") and "data a e1:3" in lines[-1]
    assert "connect since=-" in lines[0]
