"""One benchmark run: every selected scenario, baseline then project, each on a freshly started server.

The sizes come from a ``Profile``: ``quick`` for ``make bench`` (a few minutes), ``full`` for
``make bench-full`` (the clients x rate grid, 50,000 idle clients, a burst of 10,000, the ``scale``
setups), ``smoke`` for ``tests/test_bench_smoke.py`` (seconds). Scenarios with sizes of their own
(``publish``, ``scale``, ``many``) keep them in their modules. A run is a JSON-ready dict that
``bench.report`` writes up.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench import delivery_options, many, peers, publish, scale, scenarios, shards
from bench.environment import describe
from bench.limits import connections_per_process
from bench.loadgen import LoadGenerator
from bench.servers import ProjectEnvironment, RunningServer, ServerSpec, running

SCENARIOS = ("echo", "fanout", "idle", "burst", "many", "publish", "scale", "peers", "options", "shards")


@dataclasses.dataclass(frozen=True)
class Profile:
    """The sizes of one kind of run."""

    lat_conns: int
    lat_msgs: int
    lat_rounds: int  # echo latency alternates between the servers this many times
    thr_conns: int
    thr_secs: float
    window: int
    clients: tuple[int, ...]
    rates: tuple[float, ...]
    fan_secs: float
    grace: float
    idle: int
    burst: int
    # (clients, rate) cells of the peers scenario: two client implementations and Socket.IO.
    peers: tuple[tuple[int, float], ...] = ()
    # Issue 23: the peers cells also measure make serve's default (WEB_CONCURRENCY=auto).
    peers_auto: bool = False


PROFILES = {
    "quick": Profile(
        lat_conns=1, lat_msgs=2000, lat_rounds=10, thr_conns=50, thr_secs=5, window=16,
        clients=(250, 1000), rates=(10, 50), fan_secs=5, grace=5, idle=2000, burst=2000,
        peers=((1000, 50),), peers_auto=True,
    ),
    "full": Profile(
        lat_conns=1, lat_msgs=5000, lat_rounds=10, thr_conns=50, thr_secs=10, window=16,
        clients=(100, 250, 500, 1000, 2000), rates=(2, 10, 50, 100), fan_secs=10, grace=5,
        idle=50_000, burst=10_000, peers=((1000, 10), (1000, 50), (1000, 100)), peers_auto=True,
    ),
    "smoke": Profile(
        lat_conns=2, lat_msgs=20, lat_rounds=2, thr_conns=4, thr_secs=0.5, window=4,
        clients=(3,), rates=(20,), fan_secs=0.5, grace=2, idle=5, burst=5, peers=((3, 20),),
    ),
}  # fmt: skip

Progress = Callable[[str], None]


def to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def both(
    project: ProjectEnvironment,
    spec: ServerSpec,
    measure: Callable[[RunningServer], dict[str, Any]],
) -> dict[str, Any]:
    """Measure the baseline, then the project's server, each freshly started."""
    pair: dict[str, Any] = {}
    for side, side_spec in (("baseline", ServerSpec("baseline")), ("project", spec)):
        with running(side_spec, project) as server:
            pair[side] = measure(server)
    return pair


def fanout_cell(
    server: RunningServer, *, load: LoadGenerator, clients: int, rate: float, profile: Profile
) -> dict[str, Any]:
    """One cell of the fan-out grid on one server."""
    return scenarios.fanout(server, load, clients, rate, profile.fan_secs, profile.grace)


def run(
    profile_name: str,
    spec: ServerSpec,
    loadgen_workers: int = 2,
    only: Sequence[str] = SCENARIOS,
    progress: Progress = to_stderr,
) -> dict[str, Any]:
    """Run the selected scenarios against the baseline and ``spec``; return the run's results.

    A scenario that fails stops the run; the results so far are returned with ``error`` set, so that
    a long run still leaves a report.
    """
    profile = PROFILES[profile_name]
    started = time.monotonic()
    results: dict[str, Any] = {}
    run_info: dict[str, Any] = {
        "profile": profile_name,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "servers": {"baseline": ServerSpec("baseline").label(), "project": spec.label()},
        "parameters": {**dataclasses.asdict(profile), "loadgen_workers": loadgen_workers},
        "scenarios": results,
    }
    with ProjectEnvironment.open() as project, LoadGenerator(loadgen_workers) as load:
        run_info["environment"] = describe(project.redis_url)
        try:
            if "echo" in only:
                with running(ServerSpec("baseline"), project) as baseline, running(spec, project) as ours:
                    results["echo_latency"] = scenarios.echo_latency(
                        {"baseline": baseline, "project": ours},
                        load,
                        profile.lat_conns,
                        profile.lat_msgs,
                        profile.lat_rounds,
                    )
                results["echo_throughput"] = both(
                    project,
                    spec,
                    lambda server: scenarios.echo_throughput(
                        server, load, profile.thr_conns, profile.thr_secs, profile.window
                    ),
                )
                progress(f"echo: {summary_echo(results)}")
            if "fanout" in only:
                results["fanout"] = []
                for rate in profile.rates:
                    for clients in profile.clients:
                        cell = both(
                            project,
                            spec,
                            functools.partial(
                                fanout_cell, load=load, clients=clients, rate=rate, profile=profile
                            ),
                        )
                        results["fanout"].append(cell)
                        progress(f"fan-out {clients} x {rate:g}/s: {summary_fanout(cell)}")
            if "idle" in only:
                idle = idle_clients(profile.idle, progress)
                results["idle"] = both(project, spec, lambda s: scenarios.idle(s, load, idle))
                for side in results["idle"].values():
                    side["wanted"] = profile.idle
                progress(f"idle {idle}: " + summary(results["idle"], "kb_per_connection", "KB/conn"))
            if "burst" in only:
                results["burst"] = both(project, spec, lambda s: scenarios.burst(s, load, profile.burst))
                progress(f"burst {profile.burst}: " + summary(results["burst"], "failed", "failed"))
            if "many" in only:
                if (held := many.measure(project, profile_name, progress)) is None:
                    progress(f"many: not in the {profile_name} profile")
                else:
                    results["many"] = held
            if "publish" in only and not spec.is_baseline:
                results["publish"] = publish.measure(project, spec, profile_name)
                progress("publish: " + publish.summary(results["publish"]))
            if "scale" in only:
                if (found := scale.measure(project, load, profile_name, progress)) is None:
                    progress(f"scale: not in the {profile_name} profile (--profile full --only scale)")
                else:
                    results["scale"] = found
            if "options" in only and not spec.is_baseline:
                clients, rate, max_rate = delivery_options.CONFLATION[profile_name]
                options = results["options"] = {}
                options["conflation"] = delivery_options.conflation(
                    project, spec, load, clients=clients, rate=rate, max_rate=max_rate,
                    seconds=profile.fan_secs, grace=profile.grace,
                )  # fmt: skip
                progress("conflation: " + delivery_options.summary_conflation(options["conflation"]))
                clients, rate = delivery_options.COMPRESSION[profile_name]
                options["compression"] = delivery_options.compression(
                    project,
                    spec,
                    load,
                    clients=clients,
                    rate=rate,
                    seconds=profile.fan_secs,
                    grace=profile.grace,
                )
                progress("compression: " + delivery_options.summary_compression(options["compression"]))
            if "shards" in only and not spec.is_baseline:
                results["shards"] = shards.measure(project, spec, profile_name, progress)
                progress("shards (cluster / single): " + shards.summary(results["shards"]))
            if "peers" in only:
                results["peers"] = peers.measure(
                    project, spec, load, profile.peers, profile.fan_secs, profile.grace, profile.peers_auto
                )
                for found in results["peers"]:
                    progress("peers " + peers.summary(found))
        except Exception as exc:
            run_info["error"] = f"{type(exc).__name__}: {exc}"
            progress(f"run stopped: {run_info['error']}")
    run_info["environment"]["load_after"] = os.getloadavg()
    run_info["seconds"] = time.monotonic() - started
    return run_info


def idle_clients(wanted: int, progress: Progress) -> int:
    """``wanted``, or as many as one process's open-files limit allows (each server holds them all)."""
    room = connections_per_process()
    if wanted > room:
        progress(
            f"idle: {wanted:,} clients need {wanted:,} descriptors in one server process; the hard "
            f"open-files limit here allows {room:,} (ulimit -Hn): measuring {room:,}"
        )
    return min(wanted, room)


def summary(pair: dict[str, Any], key: str, unit: str) -> str:
    return f"baseline {pair['baseline'][key]:,.1f} {unit}, project {pair['project'][key]:,.1f} {unit}"


def summary_echo(results: dict[str, Any]) -> str:
    return (
        summary(results["echo_throughput"], "msgs_per_s", "msgs/s")
        + "; p50 RTT "
        + summary(results["echo_latency"], "p50_ms", "ms")
    )


def summary_fanout(cell: dict[str, Any]) -> str:
    return "; ".join(
        f"{side} p99 {r['p99_ms']:,.0f} ms, lost {r['lost_pct']:.2f} %, {r['deliveries_per_s']:,.0f}/s, "
        f"CPU server {r['server_cpu_pct']:.0f} % ({r['server_cpu_us_per_delivery']:.1f} µs/delivery) "
        f"/ load gen {r['loadgen_cpu_pct']:.0f} %"
        for side, r in cell.items()
    )
