"""Counters of one server process, rendered in Prometheus' text format at ``/metrics``.

Plain integers, incremented on the hot path (a dict lookup and an add), read only when scraped. Each
server process counts its own; a scraper sums over replicas.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

# name -> help text; every counter is listed here so /metrics shows it from the start, at 0.
COUNTERS = {
    "ws_connections_total": "WebSocket connections accepted",
    "ws_refused_total": "WebSocket connections refused after the handshake, by reason",
    "ws_frames_in_total": "Frames received from clients, by kind",
    "ws_frames_out_total": "Frames sent to clients (one frame may carry several messages)",
    "ws_messages_relayed_total": "Pushed messages relayed to clients",
    "ws_messages_replayed_total": "Messages replayed from history",
    "ws_resets_total": "Reset frames sent: a client's view of a topic could not be continued",
    "ws_dropped_total": "Frames or messages dropped, by reason",
    "ws_closed_total": "Connections the server closed, by close code",
    "ws_errors_total": "Errors handling a connection",
}

counts: Counter[tuple[str, str]] = Counter()


def inc(name: str, label: str = "", amount: int = 1) -> None:
    """Add ``amount`` to counter ``name`` (with one label value, the reason or kind, if any)."""
    counts[(name, label)] += amount


LABEL_NAMES = {
    "ws_refused_total": "reason",
    "ws_frames_in_total": "kind",
    "ws_dropped_total": "reason",
    "ws_closed_total": "code",
    "ws_errors_total": "kind",
}


def render(gauges: Iterable[tuple[str, str, float]]) -> str:
    """The Prometheus text exposition of every counter, plus ``gauges`` as (name, help, value)."""
    lines: list[str] = []
    for name, help_text in COUNTERS.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        labelled = sorted((label, value) for (n, label), value in counts.items() if n == name)
        if not labelled:
            lines.append(f"{name} 0")
        for label, count in labelled:
            key = LABEL_NAMES.get(name)
            lines.append(f'{name}{{{key}="{label}"}} {count}' if key and label else f"{name} {count}")
    for name, help_text, value in gauges:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value:g}"]
    return "\n".join(lines) + "\n"
