"""Smoke test of the ``peers`` scenario: the Node ``ws`` client and the Socket.IO peer work end to end.

Like ``test_bench_smoke.py``, nothing here asserts a timing or a target: a tiny cell (3 clients) is
measured by both client implementations on the baseline and the project, and the Socket.IO peer with
its own client, and every row must have received frames of the wire format and reported its cost.
The bench's npm packages are installed here (``npm ci --prefix bench/node``) if they are not yet;
without ``node`` the test is skipped, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench import peers, report, suite
from bench.servers import ServerSpec
from bench.targets import verdicts
from tests.helpers.skips import skip_or_fail

pytestmark = pytest.mark.system  # starts processes of its own (docs/testing.md: tiers)


@pytest.fixture(scope="session")
def node_packages() -> None:
    """``node`` with the bench's npm packages: installed once per session if missing."""
    try:
        node = peers.node_binary()
    except peers.NodeMissing as exc:
        skip_or_fail(f"the peers scenario needs Node.js: {exc}")
    try:
        peers.check_node()
    except peers.NodeMissing:
        npm = shutil.which("npm") or str(Path(node).with_name("npm"))
        subprocess.run(
            [npm, "ci", "--prefix", str(peers.NODE_DIR), "--no-audit", "--no-fund", "--loglevel=error"],
            check=True,
            timeout=300,
        )
        peers.check_node()


def test_node_client_and_socketio_peer_report_every_row(node_packages: None, tmp_path: Path) -> None:
    run = suite.run(
        "smoke", ServerSpec("default"), loadgen_workers=1, only=("peers",), progress=lambda _: None
    )
    assert "error" not in run, run.get("error")
    (cell,) = run["scenarios"]["peers"]
    measured = {(r["server"], r["client"]) for r in cell["rows"]}
    assert measured == {
        ("baseline", peers.PYTHON),
        ("baseline", peers.NODE_WS),
        ("project", peers.PYTHON),
        ("project", peers.NODE_WS),
        ("socketio", peers.SOCKETIO_CLIENT),
    }
    clients, rate = suite.PROFILES["smoke"].peers[0]
    assert cell["clients"] == clients and cell["rate"] == rate
    for row in cell["rows"]:
        where: Any = (row["server"], row["client"])
        assert row["clients"] == clients and not row["failures"], where
        # Frames arrived and were parsed; loss and latency are measured, not judged.
        assert 0 < row["received"] <= row["expected"], where
        assert math.isfinite(row["p99_ms"]) and row["p50_ms"] <= row["p99_ms"], where
        # CPU is read in clock ticks (10 ms): a smoke cell's few dozen frames may cost none of them.
        assert math.isfinite(row["us_per_delivery"]) and row["us_per_delivery"] >= 0, where

    assert {v.word for v in verdicts(run)} <= {"PASS", "FAIL", "n/a"}
    text = report.write(run, tmp_path).read_text()
    assert "## Peers" in text and "socket.io-client" in text and "node ws" in text
