"""Every core: the same fan-out on one server process, on several worker processes, and on two
replicas behind the repo's nginx, beside the ``websockets`` baseline (one process) in the same run.

The setups, each freshly started, each measured at the same size (a profile runs those its ``Sizes``
name) by the Node.js ``ws`` client (``peers.node_fanout``, two processes), or by the bench's Python
client (``scenarios.fanout``) where Node.js or the bench's npm packages are missing. On a machine
where the load generator shares the cores with the servers, the Python client, which costs more CPU
per frame, starved them: it measured itself, not the servers (docs/benchmarks.md).

* ``baseline``: ``bench/baseline_server.py``, one process;
* ``workers_1``: the production server with ``WEB_CONCURRENCY=1``;
* ``workers_2``: the production server with ``WEB_CONCURRENCY=2`` (uvicorn's supervisor and two
  workers accepting on one socket);
* ``workers_auto``: the production server as ``make serve`` runs it (``WEB_CONCURRENCY=auto``: one
  worker per available CPU, capped);
* ``replicas_2``: two production servers (``WEB_CONCURRENCY=1`` each) on one channel-layer prefix,
  behind ``deploy/nginx/`` (``bench/nginx.py``), as ``docker compose up --scale web=2`` runs them.
  Its CPU is both servers' and nginx's, and nginx's is also given alone (the CPU per delivery the
  proxy adds).

Each result also gives every process's share of the server CPU, so an uneven split between workers
(they race to ``accept()`` on one socket) shows, and the load generator's CPU, so that a starved
client is told from a slow server. Without nginx the replicas setup is skipped.
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

from bench import peers, scenarios
from bench.loadgen import LoadGenerator
from bench.nginx import find_nginx, running_nginx
from bench.servers import (
    WS_PATH,
    ProjectEnvironment,
    RunningServer,
    ServerSpec,
    new_layer_prefix,
    running,
    unique,
)
from bench.targets import SCALE_CLIENTS, TARGET_RATE
from scripts.ports import free_port

Result = dict[str, Any]
SETUPS = ("baseline", "workers_1", "workers_2", "workers_auto", "replicas_2")
LABELS = {
    "baseline": "baseline (websockets), 1 process",
    "workers_1": "project, WEB_CONCURRENCY=1",
    "workers_2": "project, WEB_CONCURRENCY=2",
    "workers_auto": "project, make serve's WEB_CONCURRENCY=auto",
    "replicas_2": "project, 2 replicas behind nginx",
}
SPECS = {
    "workers_1": ServerSpec("default", workers=1),
    "workers_2": ServerSpec("default", workers=2),
    "workers_auto": ServerSpec("default", workers=0),
}


@dataclasses.dataclass(frozen=True)
class Sizes:
    clients: int
    rate: float
    seconds: float
    grace: float
    setups: tuple[str, ...] = SETUPS


# None: not part of that profile. ``make bench`` (quick) runs the default configuration and the
# replicas behind nginx beside the baseline, briefly; ``make bench-full`` every setup.
SIZES: dict[str, Sizes | None] = {
    "quick": Sizes(
        clients=SCALE_CLIENTS, rate=TARGET_RATE, seconds=5, grace=5,
        setups=("baseline", "workers_auto", "replicas_2"),
    ),
    "full": Sizes(clients=SCALE_CLIENTS, rate=TARGET_RATE, seconds=10, grace=5),
    "smoke": Sizes(
        clients=4, rate=20, seconds=0.5, grace=2, setups=("baseline", "workers_auto", "replicas_2"),
    ),
}  # fmt: skip

METHOD = """\
The fan-out scenario (same publisher and loss rule as above; clients: {client}, Node's `ws` wherever
it can run, as it costs less per frame than the bench's Python client, so that on these shared cores
the servers, not the load generator, set the pace) at {clients:,} clients x {rate:g}/s for
{seconds:g} s on each setup in turn, each freshly started: the baseline (one process); the
production server with a fixed `WEB_CONCURRENCY` or as `make serve` runs it (`WEB_CONCURRENCY=auto`);
and two production servers (one process each, one channel-layer prefix) behind the repo's
`deploy/nginx/` config (Debian's nginx, listening on loopback, `least_conn`). Server CPU is the whole
tree from /proc, each process counted once: the supervisor, the workers and multiprocessing's
resource tracker, or both replicas and nginx's master and workers; for the replicas, nginx's share is
also given alone, in % of a core and in µs per delivery (what the proxy adds), beside the replicas'
own. "CPU by process" is each process's share, largest first. The load generator's CPU is in every
row: a load generator near 100 % per worker process is itself the limit.
Target (issues 13 and 23): lossless with p99 <= {target:g} ms."""


class Balanced:
    """Two or more replicas behind nginx, measured as one server."""

    def __init__(self, replicas: list[RunningServer], nginx_pid: int, port: int) -> None:
        self.replicas, self.nginx_pid, self.port = replicas, nginx_pid, port
        self.spec = replicas[0].spec

    def url(self, path: str = WS_PATH) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def tree(self) -> list[psutil.Process]:
        """Both replicas' trees and nginx's, each process once."""
        return unique([p for replica in self.replicas for p in replica.tree()] + self.nginx_tree())

    def nginx_tree(self) -> list[psutil.Process]:
        """nginx's master and workers."""
        with contextlib.suppress(psutil.Error):
            nginx = psutil.Process(self.nginx_pid)
            return [nginx, *nginx.children(recursive=True)]
        return []

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
    elif setup in SPECS:
        with running(SPECS[setup], project) as server:
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


def scale_client() -> str:
    """The client implementation the setups are measured with: Node's ``ws`` if it can run, else Python's."""
    try:
        peers.check_node()
    except peers.NodeMissing:
        return peers.PYTHON
    return peers.NODE_WS


def measure_one(
    server: RunningServer | Balanced, load: LoadGenerator, sizes: Sizes, client: str = peers.PYTHON
) -> Result:
    """The fan-out on one setup, with each process's share of the server CPU, and nginx's CPU alone."""
    processes = server.tree()
    before = cpu_by_process(processes)
    if client == peers.NODE_WS:
        result = peers.node_fanout(server, sizes.clients, sizes.rate, sizes.seconds, sizes.grace)
    else:
        result = scenarios.fanout(server, load, sizes.clients, sizes.rate, sizes.seconds, sizes.grace)
    after = cpu_by_process(processes)
    used = {pid: after[pid] - before.get(pid, 0.0) for pid in after}
    total = sum(used.values())
    shares = sorted(used.values(), reverse=True)
    result["cpu_by_process_pct"] = [round(100 * u / total, 1) for u in shares if u > 0] if total else []
    result["label"] = (
        server.spec.label() if isinstance(server, RunningServer) else "2 x " + server.spec.label()
    )
    if isinstance(server, Balanced):
        nginx = sum(used.get(p.pid, 0.0) for p in server.nginx_tree())
        received = result["received"]
        result["nginx_cpu_seconds"] = nginx
        result["nginx_cpu_pct"] = 100 * nginx / result["seconds"]
        result["nginx_us_per_delivery"] = 1e6 * nginx / received if received else math.nan
        result["replicas_us_per_delivery"] = 1e6 * (total - nginx) / received if received else math.nan
    return result


def measure(
    project: ProjectEnvironment, load: LoadGenerator, profile: str, progress: Callable[[str], None]
) -> Result | None:
    """Run every setup at the profile's size; None if the profile has no scale size."""
    sizes = SIZES[profile]
    if sizes is None:
        return None
    nginx = find_nginx()
    client = scale_client()
    results: Result = {**dataclasses.asdict(sizes), "client": client, "setups": {}}
    for setup in sizes.setups:
        if setup == "replicas_2" and nginx is None:
            results["setups"][setup] = {"skipped": "no nginx (apt-get install nginx, or set NGINX)"}
            progress(f"scale {setup}: skipped, no nginx")
            continue
        with started(setup, project, nginx or "") as server:
            r = measure_one(server, load, sizes, client)
        results["setups"][setup] = r
        progress(f"scale {LABELS[setup]}: {line(r)}")
    return results


def line(r: Result) -> str:
    nginx = f", nginx {r['nginx_us_per_delivery']:.1f} µs/delivery" if "nginx_cpu_pct" in r else ""
    return (
        f"{r['deliveries_per_s']:,.0f}/s, lost {r['lost_pct']:.2f} %, p99 {r['p99_ms']:,.0f} ms, "
        f"{r['server_cpu_us_per_delivery']:.1f} µs/delivery{nginx}, CPU {r['server_cpu_pct']:.0f} % "
        f"({' / '.join(f'{x:g}' for x in r['cpu_by_process_pct'])}), load gen {r['loadgen_cpu_pct']:.0f} %"
    )


def _fmt(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def setup_label(setup: str, r: Result) -> str:
    """The setup's name in tables, with the server's own label where it says more (``auto=2``)."""
    return f"{LABELS[setup]} ({r['label']})" if setup == "workers_auto" and "label" in r else LABELS[setup]


def table(result: Result) -> list[str]:
    """The setups side by side, then the scaling against one worker and what nginx adds."""
    lines = [
        "| setup | clients | deliveries/s (offered) | lost % | p50 ms | p99 ms | max ms | server CPU % "
        "| server CPU µs / delivery | of which nginx: CPU % / µs per delivery | CPU by process % "
        "| load gen CPU % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for setup, r in result["setups"].items():
        if "skipped" in r:
            lines.append(f"| {LABELS[setup]} | {r['skipped']} |  |  |  |  |  |  |  |  |  |  |")
            continue
        nginx = (
            f"{r['nginx_cpu_pct']:.0f} / {_fmt(r['nginx_us_per_delivery'], '.1f')}"
            if "nginx_cpu_pct" in r
            else "-"
        )
        lines.append(
            f"| {setup_label(setup, r)} | {r['clients']:,} | {_fmt(r['deliveries_per_s'], ',.0f')} "
            f"({_fmt(r['offered_per_s'], ',.0f')}) | {r['lost_pct']:.2f} | {_fmt(r['p50_ms'], '.1f')} "
            f"| {_fmt(r['p99_ms'], '.1f')} | {_fmt(r['max_ms'], '.1f')} | {r['server_cpu_pct']:.0f} "
            f"| {_fmt(r['server_cpu_us_per_delivery'], '.1f')} | {nginx} "
            f"| {' / '.join(f'{x:g}' for x in r['cpu_by_process_pct'])} | {r['loadgen_cpu_pct']:.0f} |"
        )
    lines += ["", *scaling_lines(result), *nginx_lines(result)]
    return lines


def scaling_lines(result: Result) -> list[str]:
    """One line per setup of several processes: its figures as multiples of one worker's."""
    setups = result["setups"]
    one = setups.get("workers_1")
    if not one or "skipped" in one:
        return []
    found = []
    for setup in ("workers_2", "workers_auto", "replicas_2"):
        two = setups.get(setup)
        if not two or "skipped" in two:
            continue
        found.append(
            f"- 1 worker → {setup_label(setup, two).removeprefix('project, ')}: deliveries/s "
            f"{one['deliveries_per_s']:,.0f} → {two['deliveries_per_s']:,.0f}, p99 {one['p99_ms']:,.0f} → "
            f"{two['p99_ms']:,.0f} ms, lost {one['lost_pct']:.2f} → {two['lost_pct']:.2f} %, CPU per "
            f"delivery {one['server_cpu_us_per_delivery']:.1f} → {two['server_cpu_us_per_delivery']:.1f} µs"
        )
    return found


def nginx_lines(result: Result) -> list[str]:
    """What nginx adds per delivery, beside what the replicas behind it spend."""
    r = result["setups"].get("replicas_2")
    if not r or "nginx_cpu_pct" not in r:
        return []
    beside = [
        f"{r2['p99_ms']:,.0f} ms {name}"
        for name, r2 in (
            ("direct, make serve's default", result["setups"].get("workers_auto")),
            ("direct, 1 worker", result["setups"].get("workers_1")),
            ("for the baseline", result["setups"].get("baseline")),
        )
        if r2 and "skipped" not in r2
    ]
    return [
        f"- nginx adds {_fmt(r['nginx_us_per_delivery'], '.1f')} µs of CPU per delivery "
        f"({r['nginx_cpu_pct']:.0f} % of a core); the two replicas behind it spend "
        f"{_fmt(r['replicas_us_per_delivery'], '.1f')} µs",
        f"- p99 behind nginx {r['p99_ms']:,.0f} ms, against " + ", ".join(beside),
    ]


def summary(result: Result) -> str:
    return "; ".join(
        f"{setup} "
        + ("skipped" if "skipped" in r else f"p99 {r['p99_ms']:,.0f} ms, lost {r['lost_pct']:.2f} %")
        for setup, r in result["setups"].items()
    )
