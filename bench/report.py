"""The dated write-up of one run: a Markdown report and a PNG plot in ``bench/results/``.

Goal, method, hardware and versions, the targets as PASS / FAIL beside the baseline, then every
figure measured. matplotlib is a bench-only dependency (``bench/requirements.txt``); without it the
Markdown is still written.

``python -m bench.report --docs bench/results/<run>.json`` writes that run's targets table into
README.md and docs/benchmarks.md, replacing what is between ``<!-- bench:summary -->`` and
``<!-- /bench:summary -->`` (the only part of those files it touches).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import delivery_options, many, peers, publish, scale, shards
from bench.targets import (
    SCALE_P99_MS,
    TARGET_IDLE,
    TARGET_KB_PER_CONNECTION,
    Verdict,
    verdicts,
)

GOAL = (
    "Measure the project's WebSocket server (Django Channels, the Redis fan-out channel layer, "
    "`push_data` as the publisher) against a plain `websockets` server broadcasting in-process, "
    "in the same run, and judge the targets of issues 4, 13 and 23."
)
ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "README.md", ROOT / "docs" / "benchmarks.md")
BEGIN, END = "<!-- bench:summary -->", "<!-- /bench:summary -->"
# The README's summary: the targets of these families only (the whole table is in docs/benchmarks.md).
README_TARGETS = ("peers", "scale", f"{TARGET_IDLE:,} idle", "fan-out")

METHOD = """\
- Servers run one at a time on 127.0.0.1, each freshly started per scenario (and per fan-out cell).
  The project's server is started as `make serve` starts it (collectstatic, `DJANGO_DEBUG=0`, random
  secret, allowed hosts `localhost,127.0.0.1`, Redis found by `scripts.devenv`), with a
  channel-layer prefix of its own per start. The baseline is `bench/baseline_server.py`
  (`websockets` on uvloop, `broadcast()` of frames in the project's wire format).
- Clients: `bench/client.py` worker processes (uvloop, the `websockets` asyncio client, no
  compression), all connected before a measurement starts. Clients connect to
  `/ws/echo/?topics=prices` and split every text frame on `\\n` (a server may batch frames).
- Fan-out: the publisher is `manage.py push_data --source sine --rate R --count N --topic prices`
  for the project and the baseline's in-process broadcast; latency is `time.time()` at receive minus
  the frame's `ts` (same machine, same clock); a frame is lost if it never arrived, or had not arrived
  {grace:g} s after the publisher finished; deliveries/s = frames received / (last receive - first
  publish).
- Echo latency: one message at a time on {lat_conns} connection(s), {lat_msgs:,} round trips each, in
  {lat_rounds} rounds taken in turn with the other server (both running), so that the machine's noise falls on
  both.
  Echo throughput: {thr_conns} connections for {thr_secs:g} s, each with at most {window} messages in flight.
- Idle: clients opened 200 handshakes at a time per worker and held silent; memory per connection is
  the server's RSS (whole process tree) after minus before, over the clients connected (beside it,
  the load generator's whole RSS over the same clients: an upper bound). Clients of a loopback
  server connect from 127.0.0.2 to 127.0.0.9 in turn, so that no source address runs out of ports;
  one server process can hold no more connections than its open-files limit (`ulimit -Hn`) allows,
  and the run measures no more.
  Burst: every handshake started at the same moment.
- CPU is % of one core over the measured window, for the server (process tree) and the load
  generator (all workers); a load generator near 100 % x workers limits what is measured.
  Server CPU per delivery (fan-out) is the server's CPU seconds over the window (publishing and the
  grace period included) divided by the frames clients received, in µs; the baseline's tree includes
  its in-process publisher, the project's `push_data` runs outside it.
"""


def fmt(value: Any, spec: str = ",.0f") -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return format(value, spec)


def verdict_table(found: list[Verdict]) -> list[str]:
    lines = ["| target | project | baseline | ratio | result |", "|---|---|---|---|---|"]
    lines += [f"| {v.target} | {v.project} | {v.baseline} | {v.ratio} | **{v.word}** |" for v in found]
    return lines


def fanout_table(cells: list[dict[str, Any]], servers: dict[str, str]) -> list[str]:
    lines = [
        "| clients | pushes/s | server | deliveries/s (offered) | lost % | p50 ms | p95 ms | p99 ms | max ms "
        "| server CPU % | server CPU µs / delivery | load gen CPU % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in cells:
        for side in ("baseline", "project"):
            r = cell[side]
            failures = f" ({sum(r['failures'].values())} failed to connect)" if r["failures"] else ""
            lines.append(
                f"| {r['clients']:,}{failures} | {r['rate']:g} | {servers[side]} "
                f"| {fmt(r['deliveries_per_s'])} ({fmt(r['offered_per_s'])}) | {r['lost_pct']:.2f} "
                f"| {fmt(r['p50_ms'], '.1f')} | {fmt(r['p95_ms'], '.1f')} | {fmt(r['p99_ms'], '.1f')} "
                f"| {fmt(r['max_ms'], '.1f')} | {r['server_cpu_pct']:.0f} "
                f"| {fmt(r.get('server_cpu_us_per_delivery', math.nan), '.1f')} "
                f"| {r['loadgen_cpu_pct']:.0f} |"
            )
    return lines


def echo_table(scenarios: dict[str, Any], servers: dict[str, str]) -> list[str]:
    lines = [
        "| server | echo msgs/s | p50 RTT ms | p99 RTT ms | server CPU % (throughput) | load gen CPU % |",
        "|---|---|---|---|---|---|",
    ]
    latency, throughput = scenarios.get("echo_latency"), scenarios.get("echo_throughput")
    for side in ("baseline", "project"):
        lat = latency[side] if latency else {}
        thr = throughput[side] if throughput else {}
        nan = math.nan
        lines.append(
            f"| {servers[side]} | {fmt(thr.get('msgs_per_s', nan))} | {fmt(lat.get('p50_ms', nan), '.3f')} "
            f"| {fmt(lat.get('p99_ms', math.nan), '.3f')} | {fmt(thr.get('server_cpu_pct', math.nan))} "
            f"| {fmt(thr.get('loadgen_cpu_pct', math.nan))} |"
        )
    return lines


def connections_table(scenarios: dict[str, Any], servers: dict[str, str]) -> list[str]:
    lines = [
        "| server | idle clients held | KB per idle connection | RSS before → after MB | connect s "
        "| load gen RSS KB / connection | burst: connected / started | burst failures "
        "| handshake p50 / p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    idle, burst = scenarios.get("idle"), scenarios.get("burst")
    for side in ("baseline", "project"):
        i = idle[side] if idle else None
        b = burst[side] if burst else None
        idle_cells = (
            f"{i['still_open']:,} / {i['clients']:,} | {i['kb_per_connection']:.1f} "
            f"| {i['rss_before_mb']:.0f} → {i['rss_after_mb']:.0f} | {i['connect_seconds']:.1f} "
            f"| {fmt(i.get('loadgen_kb_per_connection', math.nan), '.1f')}"
            if i
            else "- | - | - | - | -"
        )
        burst_cells = (
            f"{b['connected']:,} / {b['clients']:,} | {b['failures'] or 'none'} "
            f"| {fmt(b['handshake_p50_ms'], '.0f')} / {fmt(b['handshake_p99_ms'], '.0f')}"
            if b
            else "- | - | -"
        )
        lines.append(f"| {servers[side]} | {idle_cells} | {burst_cells} |")
    return lines


def plot(run: dict[str, Any], path: Path) -> bool:
    """p99 latency and loss against clients, one line per server and rate; False without matplotlib."""
    cells = run["scenarios"].get("fanout")
    if not cells:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, (latency_axes, loss_axes) = plt.subplots(1, 2, figsize=(12, 4.5))
    rates = sorted({c["project"]["rate"] for c in cells})
    for side, style in (("baseline", "--"), ("project", "-")):
        for rate in rates:
            points = sorted((c[side]["clients"], c[side]) for c in cells if c[side]["rate"] == rate)
            clients = [p[0] for p in points]
            label = f"{run['servers'][side]}, {rate:g}/s"
            latency_axes.plot(clients, [p[1]["p99_ms"] for p in points], style, marker="o", label=label)
            loss_axes.plot(clients, [p[1]["lost_pct"] for p in points], style, marker="o", label=label)
    latency_axes.axhline(100, color="grey", linewidth=0.8)
    latency_axes.axhline(250, color="grey", linewidth=0.8, linestyle=":")
    latency_axes.set(
        xlabel="clients", ylabel="publish → receive p99 (ms)", yscale="log", title="Fan-out latency"
    )
    loss_axes.set(xlabel="clients", ylabel="lost (%)", title="Fan-out loss")
    latency_axes.legend(fontsize=7)
    env = run["environment"]
    figure.suptitle(f"{run['date']} ({run['profile']}), {env['cpu_model']}, {env['nproc']} cores")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def markdown(run: dict[str, Any], plot_name: str | None) -> str:
    """The whole report as Markdown."""
    env, profile, servers = run["environment"], run["parameters"], run["servers"]
    versions = ", ".join(f"{name} {version}" for name, version in env["versions"].items())
    lines = [
        f"# Benchmark, {run['date']} ({run['profile']})",
        "",
        f"Measured on this machine; figures will be updated as the server changes. Project server: "
        f"**{servers['project']}**; baseline: **{servers['baseline']}**. Code: {env['code']}.",
        "",
        "## Goal",
        "",
        GOAL,
        "",
        "## Method",
        "",
        METHOD.format(**profile),
        "## Hardware and versions",
        "",
        f"- {env['nproc']} cores ({env['cpu_model']}), {env['memory_gb']} GB memory, Linux {env['kernel']}",
        f"- {versions}",
        f"- load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in env['load_before'])}; "
        f"after: {', '.join(f'{x:.2f}' for x in env['load_after'])} (the machine is shared)",
        f"- load generator: {profile['loadgen_workers']} worker processes; run took {run['seconds']:.0f} s",
        "",
        "## Targets (issue 4)",
        "",
        *verdict_table(verdicts(run)),
        "",
    ]
    scenarios = run["scenarios"]
    if scenarios.get("fanout"):
        lines += ["## Fan-out", "", *fanout_table(scenarios["fanout"], servers), ""]
        if plot_name:
            lines += [f"![p99 latency and loss against clients and rate]({plot_name})", ""]
    if scenarios.get("echo_latency") or scenarios.get("echo_throughput"):
        lines += ["## Echo", "", *echo_table(scenarios, servers), ""]
    if scenarios.get("idle") or scenarios.get("burst"):
        lines += ["## Connections", "", *connections_table(scenarios, servers), ""]
    if scenarios.get("many"):
        found = scenarios["many"]
        room = found.get("project", found.get("baseline", {})).get("room_per_process", 0)
        method = many.METHOD.format(**found, room=room, target=TARGET_IDLE, kb=TARGET_KB_PER_CONNECTION)
        lines += [f"## {found['clients']:,} idle connections, several processes", "", method, ""]
        lines += [*many.table(found), ""]
    if scenarios.get("publish"):
        method = publish.METHOD.format(**scenarios["publish"]["sizes"])
        lines += ["## Publishing over HTTP", "", method, "", *publish.table(scenarios["publish"]), ""]
    if scenarios.get("scale"):
        method = scale.METHOD.format(**{"client": peers.PYTHON, **scenarios["scale"]}, target=SCALE_P99_MS)
        lines += ["## Every core: workers and replicas", "", method, "", *scale.table(scenarios["scale"]), ""]
    if scenarios.get("options"):
        conflation = scenarios["options"]["conflation"]
        method = delivery_options.METHOD.format(**{k: conflation[k] for k in ("clients", "rate", "max_rate")})
        lines += ["## Delivery options: conflation and compression", "", method, ""]
        lines += [*delivery_options.table(scenarios["options"]), ""]
    if scenarios.get("shards"):
        found = scenarios["shards"]
        method = shards.METHOD.format(**found["sizes"], redis=found["redis"]) if "sizes" in found else ""
        lines += ["## Redis Cluster against one Redis server", "", method, "", *shards.table(found), ""]
    if scenarios.get("peers"):
        lines += ["## Peers: two client implementations, and Socket.IO", "", peers.method(), ""]
        lines += [*peers.table(scenarios["peers"]), ""]
    return "\n".join(lines)


def write(run: dict[str, Any], directory: Path) -> Path:
    """Write ``<date>-<profile>.md``, ``.png`` and ``.json`` (raw) in ``directory``; return the .md."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{run['date'].replace(':', '').replace(' ', '-')}-{run['profile']}"
    png = directory / f"{stem}.png"
    report = directory / f"{stem}.md"
    report.write_text(markdown(run, png.name if plot(run, png) else None))
    (directory / f"{stem}.json").write_text(json.dumps(run, indent=1, default=str) + "\n")
    return report


# ------------------------------------------------------------ the docs' summary


def summary_block(run: dict[str, Any], report: Path, doc: Path) -> list[str]:
    """The lines between the markers in ``doc``: the run's targets table, linking ``report``.

    The README gets the targets of issue 23's families and a pointer to docs/benchmarks.md, which
    gets every target.
    """
    env = run["environment"]
    link = Path(os.path.relpath(report, doc.parent)).as_posix()
    found = verdicts(run)
    readme = doc.name == "README.md"
    if readme:
        found = [v for v in found if v.target.startswith(README_TARGETS)]
    title = [] if readme else [f"### {run['date']}: `make bench` ({run['profile']}), the summary", ""]
    lines = [
        *title,
        *textwrap.wrap(
            f"Latest [report]({link}) ({run['date']}, {run['profile']}), {env['nproc']} cores "
            f"({env['cpu_model']}). Each figure beside the baseline or peer measured in the same run; "
            "compare ratios, not absolute figures, across runs.",
            width=105,
        ),
        "",
        "| target | project | baseline / peer | ratio | result |",
        "|---|---|---|---|---|",
        *(f"| {v.target} | {v.project} | {v.baseline} | {v.ratio} | **{v.word}** |" for v in found),
    ]
    if readme:  # the README is at the top of the repository
        lines += [
            "",
            "Every target, the method and what each change bought: [docs/benchmarks.md](docs/benchmarks.md).",
        ]
    return lines


def replace_between_markers(text: str, block: list[str]) -> str:
    """``text`` with what is between BEGIN and END replaced by ``block``; ValueError without them."""
    pattern = re.compile(re.escape(BEGIN) + r"\n.*?" + re.escape(END), re.S)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"expected one {BEGIN} ... {END} block")
    return pattern.sub(lambda _: "\n".join([BEGIN, *block, END]), text)


def update_docs(results: Path, docs: Sequence[Path] = DOCS) -> list[Path]:
    """Write the summary of the run in ``results`` (its JSON) into each of ``docs``; return them.

    Every file is checked for its markers before any is written.
    """
    run = json.loads(results.read_text())
    report = results.with_suffix(".md")
    updated = {doc: replace_between_markers(doc.read_text(), summary_block(run, report, doc)) for doc in docs}
    for doc, text in updated.items():
        doc.write_text(text)
    return list(updated)


def main(argv: Sequence[str] | None = None) -> int:
    """``--docs RESULTS.json [--files ...]``: regenerate the summary tables from a run's raw results."""
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__)
    parser.add_argument("--docs", type=Path, metavar="RESULTS_JSON", help="a run's raw results")
    parser.add_argument(
        "--files",
        type=Path,
        nargs="+",
        default=list(DOCS),
        help="the files with markers (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.docs is None:
        parser.error("--docs RESULTS_JSON is required")
    try:
        for doc in update_docs(args.docs, args.files):
            print(f"updated {doc}")
    except ValueError as exc:
        print(f"bench.report: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
