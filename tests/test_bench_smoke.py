"""Smoke test of the benchmark suite: every scenario runs on tiny sizes and reports every field.

Benchmarks are not tests: nothing here asserts a timing or a target. It checks that the suite still
works end to end (both servers start, the load generator's workers connect and report, the report is
written), so that ``make bench`` does not rot between runs. Every scenario runs against the default
server (``make serve``'s) and the baseline (``scale`` also against ``make serve``'s default
``WEB_CONCURRENCY=auto`` and, with nginx installed, two replicas behind it; ``many`` over two server
and two client processes); uvicorn, the other choice, runs echo and fan-out only, to keep the
whole file near 35 s.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest

from bench import many, peers, report, scale, shards, suite
from bench.servers import ServerSpec
from bench.targets import peers_verdicts, verdicts
from tests.helpers.skips import require_redis_server

pytestmark = pytest.mark.system  # starts processes of its own (docs/testing.md: tiers)

LATENCY_FIELDS = {"p50_ms", "p95_ms", "p99_ms", "max_ms"}
CPU_FIELDS = {"seconds", "server_cpu_pct", "loadgen_cpu_pct"}


def check_pair(pair: dict[str, Any], fields: set[str]) -> None:
    assert set(pair) == {"baseline", "project"}
    for side, result in pair.items():
        missing = fields - set(result)
        assert not missing, f"{side} result lacks {missing}: {result}"


def run_smoke(server: str, only: tuple[str, ...]) -> dict[str, Any]:
    run = suite.run("smoke", ServerSpec(server), loadgen_workers=1, only=only, progress=lambda line: None)
    assert "error" not in run, run.get("error")
    return run


def check_echo_and_fanout(run: dict[str, Any]) -> None:
    profile = suite.PROFILES["smoke"]
    scenarios = run["scenarios"]
    check_pair(scenarios["echo_latency"], {"connections", "round_trips", *LATENCY_FIELDS, *CPU_FIELDS})
    for result in scenarios["echo_latency"].values():
        assert result["round_trips"] == profile.lat_conns * profile.lat_msgs
        assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]

    check_pair(scenarios["echo_throughput"], {"connections", "replies", "msgs_per_s", "errors", *CPU_FIELDS})
    for result in scenarios["echo_throughput"].values():
        assert result["replies"] > 0 and result["msgs_per_s"] > 0

    assert len(scenarios["fanout"]) == len(profile.clients) * len(profile.rates)
    for cell in scenarios["fanout"]:
        check_pair(
            cell,
            {"clients", "rate", "published", "expected", "received", "gaps", "lost_pct", "deliveries_per_s"}
            | {"offered_per_s", "closed", "failures"}
            | LATENCY_FIELDS
            | CPU_FIELDS,
        )
        for result in cell.values():
            # Frames of the wire format arrived and were parsed; loss is measured, not asserted.
            assert 0 < result["received"] <= result["expected"]
            assert math.isfinite(result["p99_ms"])


def check_scale(result: dict[str, Any]) -> None:
    """Every setup ran (replicas behind nginx only where nginx is installed) and reports CPU per delivery."""
    sizes = scale.SIZES["smoke"]
    assert sizes is not None
    assert set(result["setups"]) == set(sizes.setups) >= {"baseline", "workers_auto", "replicas_2"}
    assert result["client"] in (peers.NODE_WS, peers.PYTHON)  # Node's where it runs
    assert result["setups"]["workers_auto"]["label"].startswith("uvicorn (make serve) auto=")
    for setup, r in result["setups"].items():
        if setup == "replicas_2" and "skipped" in r:
            continue
        if setup == "replicas_2":
            # nginx's own CPU, within the setup's (clock ticks: may be none at this size).
            assert 0 <= r["nginx_cpu_seconds"] <= r["server_cpu_seconds"] + 1e-9, r
            assert math.isfinite(r["nginx_us_per_delivery"]) and math.isfinite(
                r["replicas_us_per_delivery"]
            ), r
        assert 0 < r["received"] <= r["expected"], (setup, r)
        # CPU is read in clock ticks (10 ms): a smoke cell may cost none of them.
        assert math.isfinite(r["server_cpu_us_per_delivery"]) and r["server_cpu_us_per_delivery"] >= 0, (
            setup,
            r,
        )
        # Each process's share of the CPU used, largest first; none at all if no clock tick was seen.
        shares = r["cpu_by_process_pct"]
        assert shares == sorted(shares, reverse=True) and all(share >= 0 for share in shares), (setup, r)
        assert not shares or abs(sum(shares) - 100) < 1, (setup, r)


def check_many(result: dict[str, Any]) -> None:
    """Both sides held every connection over several processes, spread over the source addresses, and
    every client got every pushed frame."""
    sizes = many.SIZES["smoke"]
    assert sizes is not None
    for side in ("baseline", "project"):
        r = result[side]
        assert r["clients"] == r["wanted"] == sizes.clients and not r["failures"], (side, r)
        assert r["server_processes"] == sizes.server_processes, (side, r)
        assert r["client_processes"] == sizes.client_processes and r["sources"] == sizes.sources, (side, r)
        # Every connection is found in exactly one server process (how they split is the kernel's).
        assert len(r["connections_per_process"]) == sizes.server_processes, (side, r)
        assert sum(r["connections_per_process"]) == sizes.clients, (side, r)
        assert r["received"] == r["expected"] > 0 and r["gaps"] == 0 and r["lossless"], (side, r)
        assert math.isfinite(r["kb_per_connection"]) and math.isfinite(r["p99_ms"]), (side, r)
    # The baseline's processes each got an even share.
    even = sizes.clients // sizes.server_processes
    assert result["baseline"]["connections_per_process"] == [even] * sizes.server_processes


def test_every_scenario_reports_its_fields(tmp_path: Path) -> None:
    # peers needs Node.js and the bench's npm packages: tests/test_bench_peers.py covers it; shards
    # needs a redis-server 7: test_shards_compares_cluster_and_single below.
    run = run_smoke("default", tuple(name for name in suite.SCENARIOS if name not in ("peers", "shards")))
    check_echo_and_fanout(run)
    scenarios = run["scenarios"]
    check_pair(scenarios["idle"], {"clients", "connected", "still_open", "failures", "kb_per_connection"})
    check_pair(scenarios["burst"], {"clients", "connected", "failed", "failures", "handshake_p99_ms"})
    for result in scenarios["burst"].values():
        assert result["connected"] + result["failed"] == suite.PROFILES["smoke"].burst
    check_scale(scenarios["scale"])
    check_many(scenarios["many"])

    assert {v.word for v in verdicts(run)} <= {"PASS", "FAIL", "n/a"}
    written = report.write(run, tmp_path)
    text = written.read_text()
    assert "## Targets (issue 4)" in text and "## Fan-out" in text and "## Connections" in text
    assert "## Every core: workers and replicas" in text and "µs / delivery" in text
    assert "idle connections, several processes" in text and "connections per process" in text
    assert written.with_suffix(".json").exists()
    check_docs_summary(written.with_suffix(".json"), tmp_path)


def check_docs_summary(results: Path, tmp_path: Path) -> None:
    """``python -m bench.report --docs`` rewrites only the marked block, in copies of the two docs."""
    docs = [tmp_path / "README.md", tmp_path / "docs" / "benchmarks.md"]
    docs[1].parent.mkdir()
    for copy, original in zip(docs, report.DOCS, strict=True):
        copy.write_text(original.read_text())
    assert report.main(["--docs", str(results), "--files", *map(str, docs)]) == 0
    for copy, original in zip(docs, report.DOCS, strict=True):
        before, after = original.read_text(), copy.read_text()
        outside = before.split(report.BEGIN)[0], before.split(report.END)[1]
        assert after.startswith(outside[0]) and after.endswith(outside[1]), copy
        block = after.split(report.BEGIN)[1].split(report.END)[0]
        assert "| target | project | baseline / peer | ratio | result |" in block, block
        assert f"]({os.path.relpath(results.with_suffix('.md'), copy.parent)})" in block, block
        assert "idle connections" in block and "scale" in block, block
    once = [doc.read_text() for doc in docs]
    assert report.main(["--docs", str(results), "--files", *map(str, docs)]) == 0
    assert [doc.read_text() for doc in docs] == once  # the markers stay: it can be run again


def test_uvicorn_can_be_measured() -> None:
    run = run_smoke("uvicorn", ("echo", "fanout"))
    assert run["servers"]["project"] == "uvicorn"
    check_echo_and_fanout(run)


def test_shards_compares_cluster_and_single(tmp_path: Path) -> None:
    require_redis_server()  # sharded pub/sub needs redis-server 7
    run = run_smoke("default", ("shards",))
    result = run["scenarios"]["shards"]
    assert "skipped" not in result, result
    for name in shards.DEPLOYMENTS:
        side = result[name]
        for measurement in ("flood", "flood_subscribed"):
            r = side[measurement]
            assert r["messages"] > 0 and r["msgs_per_s"] > 0, (name, measurement, r)
            # Every numbered message ran its script on exactly one node.
            assert sum(s["scripts"] for s in r["shards"]) == r["messages"], (name, measurement, r)
        assert len(side["flood"]["shards"]) == (3 if name == "cluster" else 1)
        drained = side["flood_subscribed"]
        assert 0 < drained["drained"] <= drained["drained_expected"], (name, drained)
        fanout = side["fanout"]
        assert 0 < fanout["received"] <= fanout["expected"], (name, fanout)
        assert math.isfinite(fanout["p99_ms"])
    assert set(result["ratios"]) == {f"{m}.{k}" for m, k, _, _ in shards.COMPARED}
    text = report.write(run, tmp_path).read_text()
    assert "## Redis Cluster against one Redis server" in text and "cluster / single" in text


def test_peers_judges_one_worker_and_make_serves_default() -> None:
    """The peers verdicts read the one-worker rows against the baseline and Socket.IO, and make serve's
    default (``project_auto``) against one worker; made-up rows, since measuring them needs Node.js
    (tests/test_bench_peers.py runs the scenario)."""

    def row(server: str, client: str, cost: float) -> dict[str, Any]:
        return {
            "server": server, "client": client, "label": server, "us_per_delivery": cost,
            "p99_ms": 20.0, "lost_pct": 0.0, "failures": {},
        }  # fmt: skip

    costs = {"baseline": 10.0, "project": 9.0, "project_auto": 9.5}
    rows = [row(s, c, cost) for s, cost in costs.items() for c in (peers.PYTHON, peers.NODE_WS)]
    cell = {"clients": 1000, "rate": 50.0, "rows": [*rows, row("socketio", peers.SOCKETIO_CLIENT, 12.0)]}
    found = peers_verdicts([cell])
    judged = [(v.target.split(": ", 1)[1], v.word, v.ratio) for v in found]
    assert [(word, ratio) for _, word, ratio in judged] == [
        ("PASS", "1.00x"),  # p99, against the baseline's
        ("PASS", "0.90x"),  # CPU per delivery, one worker, against the baseline's (target 1.0x)
        ("n/a", "0.90x"),  # the same against the 0.5x stretch: reported, not judged
        ("PASS", "0.75x"),  # against Socket.IO's
        ("PASS", "1.06x"),  # make serve's default against one worker (within noise)
    ], judged
    assert "WEB_CONCURRENCY=auto" in judged[-1][0] and "Socket.IO" in judged[3][0], judged


def test_peers_judges_each_configuration_on_the_mean_of_its_runs() -> None:
    """With make serve's default measured, one worker and the default run twice each: the targets take
    each one's mean CPU per delivery, and the worst p99 and loss of its runs (made-up rows)."""

    def row(server: str, client: str, cost: float, run: int = 0, p99: float = 20.0) -> dict[str, Any]:
        return {
            "server": server, "client": client, "label": f"{server}, run {run}", "run": run,
            "us_per_delivery": cost, "p99_ms": p99, "lost_pct": 0.0, "failures": {},
        }  # fmt: skip

    rows = []
    for client in (peers.PYTHON, peers.NODE_WS):
        rows += [
            row("baseline", client, 10.0),
            row("project", client, 9.0, run=1),
            row("project_auto", client, 10.5, run=1),
            row("project_auto", client, 11.5, run=2, p99=45.0),
            row("project", client, 11.0, run=2),
        ]
    cell = {"clients": 1000, "rate": 50.0, "rows": [*rows, row("socketio", peers.SOCKETIO_CLIENT, 12.0)]}
    found = peers_verdicts([cell])
    assert [(v.word, v.ratio) for v in found] == [
        ("PASS", "1.00x"),  # p99 of one worker's worse run against the baseline's
        ("PASS", "1.00x"),  # one worker's mean, 10.0, against the baseline's
        ("n/a", "1.00x"),
        ("PASS", "0.83x"),
        ("PASS", "1.10x"),  # the default's mean, 11.0, against one worker's
    ], found
    assert "mean of 2 runs each" in found[-1].baseline and "p99 45 ms" in found[-1].project, found[-1]
