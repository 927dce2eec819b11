"""The chaos run's checker: does what every client received keep the stream contract?

Pure logic over records, no I/O: ``scripts/chaos.py`` collects the records (what each client received,
in order; what each publisher printed) and calls ``check``; ``tests/test_chaos_check.py`` feeds it
synthetic histories.

Per client and topic, walking the client's records in order with a position (epoch ``E``, last seq
``L``; ``L == 0`` means "no frame of ``E`` yet"):

- ``connect(since)``: a topic the client names in ``since`` must be at exactly that position (else the
  harness itself is wrong); every other topic starts afresh (``E = None``).
- ``reset(e)``: ``e == E`` is a *needless reset* (the run keeps all history, so whatever the client
  missed of ``E`` was still there); then ``E = e``, ``L = 0``.
- ``data(e, s)``: with no epoch yet, the first frame must be seq 1 (*missed the start*); of an epoch
  other than ``E``, it is a *new epoch without a reset*; within ``E``, ``s <= L`` is a *duplicate* and
  ``s > L + 1`` a *gap*.
- at the end, each followed topic must be at the topic's final published position (*did not
  converge*): together with the rules above, every frame of the final epoch reached every client.

The run keeps all history (``HISTORY_LENGTH`` above what it publishes) and starts every client before
the first publish, and a client that lost its position in a topic asks for the topic's whole history;
so every epoch a client sees must start, for that client, at seq 1.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

# (epoch, seq): where a client is in a topic, or where a topic's publishing got to.
Position = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Connect:
    """A connection opened, asking for what came after ``since`` in each topic named there."""

    t: float
    since: Mapping[str, Position] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Data:
    """A data frame: live, or replayed from history (``replay``)."""

    t: float
    topic: str
    epoch: str | None
    seq: int
    replay: bool = False


@dataclass(frozen=True, slots=True)
class Reset:
    """A reset frame: forget the topic; what follows belongs to ``epoch`` (None: no stream now)."""

    t: float
    topic: str
    epoch: str | None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Error:
    """An error frame (``rate_limited``, ``history_unavailable``...): information, a close follows."""

    t: float
    code: str


@dataclass(frozen=True, slots=True)
class Close:
    """A connection ended (``code`` None: the handshake itself failed)."""

    t: float
    code: int | None
    reason: str = ""


Record = Connect | Data | Reset | Error | Close


@dataclass(frozen=True, slots=True)
class Published:
    """One line a publisher printed: ``published <topic> <epoch> <seq>``, read at time ``t``."""

    t: float
    publisher: str
    topic: str
    epoch: str
    seq: int


@dataclass
class ClientLog:
    """Everything one client received, in order, and the topics it follows."""

    name: str
    topics: tuple[str, ...]
    records: list[Record]


@dataclass(frozen=True)
class Violation:
    """A broken rule: who (a client or a process), which topic, which rule, and where."""

    who: str
    topic: str | None
    rule: str
    detail: str
    t: float | None = None
    index: int | None = None  # into the client's records


@dataclass
class ClientSummary:
    frames: int = 0
    replayed: int = 0
    resets: int = 0
    connections: int = 0
    closes: Counter[int | None] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    epochs: set[str] = field(default_factory=set)
    final: dict[str, Position | None] = field(default_factory=dict)


@dataclass
class CheckResult:
    violations: list[Violation]
    clients: dict[str, ClientSummary]
    finals: dict[str, Position]
    # Frames clients received that no publisher printed (a publisher stopped between publishing a
    # message and printing its line), per (topic, epoch): information, not a violation.
    unrecorded: dict[tuple[str, str], list[int]]

    @property
    def frames_checked(self) -> int:
        return sum(summary.frames for summary in self.clients.values())


NEEDLESS_RESET = "needless reset"
NEW_EPOCH_WITHOUT_RESET = "new epoch without a reset"
MISSED_START = "missed the start of an epoch"
DUPLICATE = "duplicate"
GAP = "gap"
NOT_CONVERGED = "did not converge"
UNASKED_TOPIC = "frame of a topic not asked for"
BAD_SINCE = "since does not match the client's position"


def final_positions(published: Iterable[Published], clients: Iterable[ClientLog] = ()) -> dict[str, Position]:
    """Where each topic's publishing ended: the epoch of its last printed line, at that epoch's highest seq.

    A frame of that epoch that some client received beyond it was published and not printed (its
    publisher was stopped in between): it counts too, so every client must have it.
    """
    last: dict[str, Published] = {}
    highest: dict[tuple[str, str], int] = {}
    for line in published:
        if line.topic not in last or line.t >= last[line.topic].t:
            last[line.topic] = line
        key = (line.topic, line.epoch)
        highest[key] = max(highest.get(key, 0), line.seq)
    finals = {topic: (line.epoch, highest[topic, line.epoch]) for topic, line in last.items()}
    for client in clients:
        for record in client.records:
            if isinstance(record, Data) and record.topic in finals:
                epoch, seq = finals[record.topic]
                if record.epoch == epoch and record.seq > seq:
                    finals[record.topic] = (epoch, record.seq)
    return finals


def unrecorded_frames(
    published: Iterable[Published], clients: Iterable[ClientLog]
) -> dict[tuple[str, str], list[int]]:
    """Frames some client received that no publisher printed, as sorted seqs per (topic, epoch)."""
    printed = {(line.topic, line.epoch, line.seq) for line in published}
    found: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    for client in clients:
        for record in client.records:
            if isinstance(record, Data) and (record.topic, record.epoch, record.seq) not in printed:
                found[record.topic, str(record.epoch)].add(record.seq)
    return {key: sorted(seqs) for key, seqs in sorted(found.items())}


class _Follower:
    """One client's position in one topic, and the rules each record must keep."""

    def __init__(self, client: str, topic: str) -> None:
        self.client = client
        self.topic = topic
        self.epoch: str | None = None
        self.last = 0

    @property
    def position(self) -> Position | None:
        return (self.epoch, self.last) if self.epoch is not None and self.last else None

    def violation(self, rule: str, detail: str, t: float, index: int) -> Violation:
        return Violation(self.client, self.topic, rule, detail, t, index)

    def connect(self, since: Position | None, t: float, index: int) -> Violation | None:
        position = self.position
        if since is None:
            self.epoch, self.last = None, 0
            return None
        self.epoch, self.last = since
        if since != position:
            return self.violation(BAD_SINCE, f"asked since {since}, had {position}", t, index)
        return None

    def reset(self, record: Reset, index: int) -> Violation | None:
        found = None
        if record.epoch is not None and record.epoch == self.epoch:
            found = self.violation(
                NEEDLESS_RESET,
                f"reset to its own epoch {record.epoch} at seq {self.last} ({record.reason!r}): "
                "history still held what it missed",
                record.t,
                index,
            )
        self.epoch, self.last = record.epoch, 0
        return found

    def data(self, record: Data, index: int) -> Violation | None:
        epoch, seq, last = record.epoch, record.seq, self.last
        found = None
        if self.epoch is None or (epoch == self.epoch and last == 0):
            if seq != 1:
                found = self.violation(
                    MISSED_START, f"first frame of epoch {epoch} is seq {seq}", record.t, index
                )
        elif epoch != self.epoch:
            found = self.violation(
                NEW_EPOCH_WITHOUT_RESET,
                f"seq {seq} of epoch {epoch} while at {self.epoch}:{last}, with no reset between",
                record.t,
                index,
            )
        elif seq <= last:
            found = self.violation(DUPLICATE, f"seq {seq} of {epoch} again, after {last}", record.t, index)
            return found  # the position stays where it was
        elif seq > last + 1:
            missing = f"{last + 1}" if seq == last + 2 else f"{last + 1}-{seq - 1}"
            found = self.violation(
                GAP, f"seq {seq} of {epoch} after {last}: {missing} missing", record.t, index
            )
        self.epoch, self.last = epoch, seq
        return found


def check_client(log: ClientLog, finals: Mapping[str, Position]) -> tuple[list[Violation], ClientSummary]:
    """Walk one client's records in order; return what broke the contract, and a summary."""
    followers = {topic: _Follower(log.name, topic) for topic in log.topics}
    summary = ClientSummary()
    violations: list[Violation] = []

    def unasked(topic: str, t: float, index: int) -> None:
        violations.append(Violation(log.name, topic, UNASKED_TOPIC, f"follows {log.topics}", t, index))

    for index, record in enumerate(log.records):
        found: Violation | None = None
        if isinstance(record, Data):
            summary.frames += 1
            summary.replayed += record.replay
            if record.epoch is not None:
                summary.epochs.add(record.epoch)
            if record.topic not in followers:
                unasked(record.topic, record.t, index)
                continue
            found = followers[record.topic].data(record, index)
        elif isinstance(record, Reset):
            summary.resets += 1
            if record.topic not in followers:
                unasked(record.topic, record.t, index)
                continue
            found = followers[record.topic].reset(record, index)
        elif isinstance(record, Connect):
            summary.connections += 1
            for topic in sorted(record.since.keys() - followers.keys()):
                unasked(topic, record.t, index)
            for topic, follower in followers.items():
                if bad := follower.connect(record.since.get(topic), record.t, index):
                    violations.append(bad)
        elif isinstance(record, Close):
            summary.closes[record.code] += 1
        elif isinstance(record, Error):
            summary.errors[record.code] += 1
        if found is not None:
            violations.append(found)

    end = log.records[-1].t if log.records else None
    for topic, follower in followers.items():
        summary.final[topic] = follower.position
        if topic in finals and follower.position != finals[topic]:
            violations.append(
                Violation(
                    log.name,
                    topic,
                    NOT_CONVERGED,
                    f"ended at {_show(follower.position)}; the topic ended at {_show(finals[topic])}",
                    end,
                    len(log.records) - 1 if log.records else None,
                )
            )
    return violations, summary


def check(clients: Sequence[ClientLog], published: Sequence[Published]) -> CheckResult:
    """Check every client's records against the contract and against what was published."""
    finals = final_positions(published, clients)
    violations: list[Violation] = []
    summaries: dict[str, ClientSummary] = {}
    for log in clients:
        found, summaries[log.name] = check_client(log, finals)
        violations.extend(found)
    return CheckResult(violations, summaries, finals, unrecorded_frames(published, clients))


def excerpt(
    records: Sequence[Record], index: int, topic: str | None, before: int = 6, after: int = 2
) -> list[str]:
    """The records around ``index`` that concern ``topic`` (connects and closes too), one line each."""

    def concerns(record: Record) -> bool:
        return not isinstance(record, Data | Reset) or topic is None or record.topic == topic

    earlier = [i for i in range(index - 1, -1, -1) if concerns(records[i])][:before]
    later = [i for i in range(index + 1, len(records)) if concerns(records[i])][:after]
    lines = []
    for i in [*reversed(earlier), index, *later]:
        marker = ">>" if i == index else "  "
        lines.append(f"{marker} #{i} {describe(records[i])}")
    return lines


def describe(record: Record) -> str:
    """One record as a short line for a report."""
    if isinstance(record, Data):
        return f"t={record.t:.3f} data {record.topic} {record.epoch}:{record.seq}" + (
            " replay" if record.replay else ""
        )
    if isinstance(record, Reset):
        return f"t={record.t:.3f} reset {record.topic} -> {record.epoch} ({record.reason})"
    if isinstance(record, Connect):
        since = ",".join(f"{topic}:{seq}:{epoch}" for topic, (epoch, seq) in record.since.items())
        return f"t={record.t:.3f} connect since={since or '-'}"
    if isinstance(record, Error):
        return f"t={record.t:.3f} error {record.code}"
    return f"t={record.t:.3f} close {record.code} {record.reason}".rstrip()


def _show(position: Position | None) -> str:
    return "nothing" if position is None else f"{position[0]}:{position[1]}"
