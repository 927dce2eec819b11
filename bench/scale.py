"""Every core: the same fan-out on one server process, on two worker processes, and on two replicas
behind the repo's nginx, beside the ``websockets`` baseline (one process) in the same run.

Four setups, each freshly started, each measured with ``scenarios.fanout`` at the same size:

* ``baseline``: ``bench/baseline_server.py``, one process;
* ``workers_1``: the production server with ``WEB_CONCURRENCY=1``;
* ``workers_2``: the production server with ``WEB_CONCURRENCY=2`` (uvicorn's supervisor and two
  workers accepting on one socket);
* ``replicas_2``: two production servers (``WEB_CONCURRENCY=1`` each) on one channel-layer prefix,
  behind ``deploy/nginx/`` (``bench/nginx.py``), as ``docker compose up --scale web=2`` runs them.
  Its CPU is both servers' and nginx's.

Each result also gives every process's share of the server CPU, so an uneven split between workers
(they race to ``accept()`` on one socket) shows. Without nginx the replicas setup is skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from bench import scenarios
from bench.loadgen import LoadGenerator
from bench.nginx import find_nginx, running_nginx
from bench.servers import (
    WS_PATH,
    ProjectEnvironment,
    RunningServer,
    ServerSpec,
    new_layer_prefix,
    running,
)
from bench.targets import SCALE_CLIENTS, TARGET_RATE
from scripts.ports import free_port

Result = dict[str, Any]
SETUPS = ("baseline", "workers_1", "workers_2", "replicas_2")
LABELS = {
    "baseline": "baseline (websockets), 1 process",
    "workers_1": "project, WEB_CONCURRENCY=1",
    "workers_2": "project, WEB_CONCURRENCY=2",
    "replicas_2": "project, 2 replicas behind nginx",
}


@dataclasses.dataclass(frozen=True)
class Sizes:
    clients: int
    rate: float
    seconds: float
    grace: float


# None: not part of that profile (``make bench`` stays a few minutes long).
SIZES: dict[str, Sizes | None] = {
    "quick": None,
    "full": Sizes(clients=SCALE_CLIENTS, rate=TARGET_RATE, seconds=10, grace=5),
    "smoke": Sizes(clients=4, rate=20, seconds=0.5, grace=2),
}

METHOD = """\
The fan-out scenario (same clients, publisher and loss rule as above) at {clients:,} clients x
{rate:g}/s for {seconds:g} s on each setup in turn, each freshly started: the baseline (one process);
the production server with `WEB_CONCURRENCY=1`; with `WEB_CONCURRENCY=2`; and two production
servers (one process each, one channel-layer prefix) behind the repo's `deploy/nginx/` config
(Debian's nginx, listening on loopback, `least_conn`). Server CPU is the whole tree: the supervisor
and workers, or both replicas and nginx's master and workers. "CPU by process" is each process's
share of it, largest first. Target (issue 13): lossless with p99 <= {target:g} ms on two processes."""


class Balanced:
    """Two or more replicas behind nginx, measured as one server."""

    def __init__(self, replicas: list[RunningServer], nginx_pid: int, port: int) -> None:
        self.replicas, self.nginx_pid, self.port = replicas, nginx_pid, port
        self.spec = replicas[0].spec

    def url(self, path: str = WS_PATH) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def tree(self) -> list[psutil.Process]:
        processes = [p for replica in self.replicas for p in replica.tree()]
        with contextlib.suppress(psutil.Error):
            nginx = psutil.Process(self.nginx_pid)
            processes += [nginx, *nginx.children(recursive=True)]
        return processes

    def cpu_seconds(self) -> float:
        return sum(cpu_by_process(self.tree()).values())

    def rss_bytes(self) -> int:
        return sum(replica.rss_bytes() for replica in self.replicas)

    def publish(self, rate: float, count: int, timeout: float) -> None:
        """``push_data`` into the replicas' shared prefix: every replica relays it to its own clients."""
        self.replicas[0].publish(rate, count, timeout)


def cpu_by_process(processes: list[psutil.Process]) -> dict[int, float]:
    """CPU seconds (user + system) so far, per pid."""
    found: dict[int, float] = {}
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            found[process.pid] = times.user + times.system
    return found


@contextlib.contextmanager
def started(setup: str, project: ProjectEnvironment, nginx: str) -> Iterator[RunningServer | Balanced]:
    """Start one setup and stop it afterwards."""
    if setup == "baseline":
        with running(ServerSpec("baseline"), project) as server:
            yield server
    elif setup in ("workers_1", "workers_2"):
        with running(ServerSpec("default", workers=int(setup[-1])), project) as server:
            yield server
    else:
        prefix = new_layer_prefix()
        with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-nginx-") as workdir:
            replicas = [
                stack.enter_context(running(ServerSpec("default"), project, layer_prefix=prefix))
                for _ in range(2)
            ]
            port = free_port()
            pid = stack.enter_context(running_nginx(nginx, port, [r.port for r in replicas], Path(workdir)))
            yield Balanced(replicas, pid, port)


def measure_one(server: RunningServer | Balanced, load: LoadGenerator, sizes: Sizes) -> Result:
    """The fan-out on one setup, with each process's share of the server CPU."""
    processes = server.tree()
    before = cpu_by_process(processes)
    result = scenarios.fanout(server, load, sizes.clients, sizes.rate, sizes.seconds, sizes.grace)
    after = cpu_by_process(processes)
    used = sorted((after[pid] - before.get(pid, 0.0) for pid in after), reverse=True)
    total = sum(used)
    result["cpu_by_process_pct"] = [round(100 * u / total, 1) for u in used if u > 0] if total else []
    return result


def measure(
    project: ProjectEnvironment, load: LoadGenerator, profile: str, progress: Callable[[str], None]
) -> Result | None:
    """Run every setup at the profile's size; None if the profile has no scale size."""
    sizes = SIZES[profile]
    if sizes is None:
        return None
    nginx = find_nginx()
    results: Result = {**dataclasses.asdict(sizes), "setups": {}}
    for setup in SETUPS:
        if setup == "replicas_2" and nginx is None:
            results["setups"][setup] = {"skipped": "no nginx (apt-get install nginx, or set NGINX)"}
            progress(f"scale {setup}: skipped, no nginx")
            continue
        with started(setup, project, nginx or "") as server:
            r = measure_one(server, load, sizes)
        results["setups"][setup] = r
        progress(f"scale {LABELS[setup]}: {line(r)}")
    return results


def line(r: Result) -> str:
    return (
        f"{r['deliveries_per_s']:,.0f}/s, lost {r['lost_pct']:.2f} %, p99 {r['p99_ms']:,.0f} ms, "
        f"{r['server_cpu_us_per_delivery']:.1f} µs/delivery, CPU {r['server_cpu_pct']:.0f} % "
        f"({' / '.join(f'{x:g}' for x in r['cpu_by_process_pct'])})"
    )


def _fmt(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def table(result: Result) -> list[str]:
    """The setups side by side, then the 1 -> 2 worker and replica scaling."""
    lines = [
        "| setup | clients | deliveries/s (offered) | lost % | p50 ms | p99 ms | max ms | server CPU % "
        "| server CPU µs / delivery | CPU by process % | load gen CPU % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for setup, r in result["setups"].items():
        if "skipped" in r:
            lines.append(f"| {LABELS[setup]} | {r['skipped']} |  |  |  |  |  |  |  |  |  |")
            continue
        lines.append(
            f"| {LABELS[setup]} | {r['clients']:,} | {_fmt(r['deliveries_per_s'], ',.0f')} "
            f"({_fmt(r['offered_per_s'], ',.0f')}) | {r['lost_pct']:.2f} | {_fmt(r['p50_ms'], '.1f')} "
            f"| {_fmt(r['p99_ms'], '.1f')} | {_fmt(r['max_ms'], '.1f')} | {r['server_cpu_pct']:.0f} "
            f"| {_fmt(r['server_cpu_us_per_delivery'], '.1f')} "
            f"| {' / '.join(f'{x:g}' for x in r['cpu_by_process_pct'])} | {r['loadgen_cpu_pct']:.0f} |"
        )
    lines += ["", *scaling_lines(result)]
    return lines


def scaling_lines(result: Result) -> list[str]:
    """One line per two-process setup: its figures as multiples of one worker's."""
    setups = result["setups"]
    one = setups.get("workers_1")
    if not one or "skipped" in one:
        return []
    found = []
    for setup in ("workers_2", "replicas_2"):
        two = setups.get(setup)
        if not two or "skipped" in two:
            continue
        found.append(
            f"- 1 worker → {LABELS[setup].removeprefix('project, ')}: deliveries/s "
            f"{one['deliveries_per_s']:,.0f} → {two['deliveries_per_s']:,.0f}, p99 {one['p99_ms']:,.0f} → "
            f"{two['p99_ms']:,.0f} ms, lost {one['lost_pct']:.2f} → {two['lost_pct']:.2f} %, CPU per "
            f"delivery {one['server_cpu_us_per_delivery']:.1f} → {two['server_cpu_us_per_delivery']:.1f} µs"
        )
    return found


def summary(result: Result) -> str:
    return "; ".join(
        f"{setup} "
        + ("skipped" if "skipped" in r else f"p99 {r['p99_ms']:,.0f} ms, lost {r['lost_pct']:.2f} %")
        for setup, r in result["setups"].items()
    )
