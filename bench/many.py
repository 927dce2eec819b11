"""The ``many`` scenario (issue 23): 50,000 idle connections held on this machine, then a push to all.

One process here may hold no more descriptors than the hard open-files limit (``ulimit -Hn``, 20,000
on the machine this was written on, and a container cannot raise it), so 50,000 connections need
several processes on each side:

* servers: the project's production server with ``WEB_CONCURRENCY=N`` (uvicorn's workers accept on
  one shared socket, and the split between them is uneven), against ``N`` baseline processes
  (``bench/baseline_server.py``, one process each, on ports of their own) whose clients are split
  evenly between them. ``N`` is the profile's, raised if needed so that an even share is at most
  ``1 / HEADROOM`` of one process's room: a worker may then take ``HEADROOM`` times its share before
  it runs out of descriptors. Each process's connection count (its descriptors of established
  connections to the server's port, from ``/proc``) is reported, so an uneven split shows;
* clients: load-generator worker processes of their own (``bench/client.py``'s fan-out job), each
  within one process's room, connecting from several loopback source addresses (127.0.0.2, ...;
  about 28,000 ephemeral ports per source address and server address:port pair).

Memory per connection is the server's whole process tree's RSS (each process once) once it settles
with every client connected, minus the same before any connected, over the connections. Then the
publisher pushes ``rate`` frames/s for ``seconds`` to every client (the project: ``push_data``
through Redis, relayed by every worker; the baseline: every process's in-process broadcast, all
started together), and every client must get every seq: lossless means no gap, nothing missing
``grace`` seconds after the publisher finished, and no client that failed to connect.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil

from bench import scenarios
from bench.limits import connections_per_process
from bench.loadgen import LoadGenerator, split
from bench.servers import (
    WS_PATH,
    ProjectEnvironment,
    RunningServer,
    ServerSpec,
    running,
    tree_cpu_seconds,
    tree_rss_bytes,
)

Result = dict[str, Any]
# An even share of the clients is at most 1 / HEADROOM of a process's room, for the uneven accept() split:
# a uvicorn worker at its open-files limit does not leave a connection to the others (libuv accepts and
# closes it), so a worker may take up to HEADROOM times its share before a client is refused. In a
# 400-client trial on 4 workers the busiest took 1.66 times an even share (166 / 126 / 102 / 6).
HEADROOM = 2.2
# Connecting 50,000 takes about a minute here; this only bounds a hang.
CONNECT_TIMEOUT = 600.0
SIDES = ("baseline", "project")


@dataclasses.dataclass(frozen=True)
class Sizes:
    clients: int
    server_processes: int  # the project's WEB_CONCURRENCY, and as many baseline processes
    client_processes: int
    sources: int  # loopback source addresses the clients connect from
    rate: float  # frames/s pushed to every client once all are connected
    seconds: float
    grace: float


SIZES: dict[str, Sizes | None] = {
    "quick": Sizes(
        clients=50_000, server_processes=6, client_processes=4, sources=4, rate=1, seconds=10, grace=5
    ),
    "full": Sizes(
        clients=50_000, server_processes=6, client_processes=4, sources=4, rate=1, seconds=10, grace=5
    ),
    "smoke": Sizes(clients=6, server_processes=2, client_processes=2, sources=2, rate=5, seconds=1, grace=2),
}


def processes_for(clients: int, wanted: int, room: int, headroom: float) -> int:
    """``wanted`` processes, or more if an even share times ``headroom`` would not fit in ``room``."""
    return max(wanted, math.ceil(clients * headroom / max(room, 1)))


class Group:
    """Several baseline processes measured as one server: each holds a share of the clients."""

    def __init__(self, servers: list[RunningServer]) -> None:
        self.servers = servers
        self.spec = servers[0].spec
        # How many processes hold connections: one per server here, the workers for the project's.
        self.processes = max(len(servers), self.spec.workers)

    def url(self, path: str = WS_PATH) -> str:
        return self.servers[0].url(path)

    def urls(self, path: str = WS_PATH) -> list[str]:
        return [server.url(path) for server in self.servers]

    def tree(self) -> list[psutil.Process]:
        return [p for server in self.servers for p in server.tree()]

    def workers(self) -> list[psutil.Process]:
        return [p for server in self.servers for p in server.workers()]

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.tree())

    def rss_bytes(self) -> int:
        return tree_rss_bytes(self.tree())

    def publish(self, rate: float, count: int, timeout: float) -> None:
        """Every process broadcasts ``count`` frames at ``rate``/s to its own clients, all at once."""
        with ThreadPoolExecutor(len(self.servers)) as pool:
            for done in [pool.submit(s.publish, rate, count, timeout) for s in self.servers]:
                done.result()


class ProjectServer(Group):
    """The project's server, one process tree with ``WEB_CONCURRENCY`` workers, as a group of one."""

    def publish(self, rate: float, count: int, timeout: float) -> None:
        """``push_data`` once: every worker relays it to its own clients."""
        self.servers[0].publish(rate, count, timeout)


@contextlib.contextmanager
def started(side: str, processes: int, project: ProjectEnvironment) -> Iterator[Group]:
    """The project's server with ``processes`` workers, or ``processes`` baseline servers."""
    with contextlib.ExitStack() as stack:
        if side == "baseline":
            yield Group(
                [stack.enter_context(running(ServerSpec("baseline"), project)) for _ in range(processes)]
            )
        else:
            yield ProjectServer(
                [stack.enter_context(running(ServerSpec("default", workers=processes), project))]
            )


def quiet(server: Group, timeout: float = 60.0) -> None:
    """Wait until every process that will hold connections is there and idle (< 4 % CPU over 0.5 s).

    The server answered one handshake, but uvicorn's other workers may still be importing Django:
    their memory and descriptors would count as the clients' if measured now.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = server.workers()
        before = [tree_cpu_seconds([p]) for p in workers]
        time.sleep(0.5)
        after = [tree_cpu_seconds([p]) for p in workers]
        if len(workers) >= server.processes and all(b - a < 0.02 for a, b in zip(before, after, strict=True)):
            return


def settled(measure: Callable[[], int], timeout: float = 10.0) -> int:
    """``measure()`` once it stops moving (two samples half a second apart within 1 %)."""
    deadline = time.monotonic() + timeout
    previous = measure()
    while True:
        time.sleep(0.5)
        current = measure()
        if abs(current - previous) <= 0.01 * previous or time.monotonic() > deadline:
            return current
        previous = current


def established_inodes(ports: set[int]) -> set[int]:
    """Socket inodes of established TCP connections whose local port is one of ``ports`` (IPv4)."""
    found: set[int] = set()
    with open("/proc/net/tcp") as table:
        next(table)  # the header
        for row in table:
            fields = row.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) in ports:
                found.add(int(fields[9]))
    return found


def connections_by_process(processes: Sequence[psutil.Process], ports: set[int]) -> list[int]:
    """How many established connections to ``ports`` each process holds (its descriptors, from /proc)."""
    inodes = established_inodes(ports)
    counts = []
    for process in processes:
        held = 0
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{process.pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{process.pid}/fd/{fd}")
                    if link.startswith("socket:[") and int(link[8:-1]) in inodes:
                        held += 1
        counts.append(held)
    return counts


def measure_side(server: Group, load: LoadGenerator, sizes: Sizes, client_processes: int) -> Result:
    """Connect every client, measure memory and the split, push to all of them, and tally."""
    quiet(server)
    workers = server.workers()
    rss_before = settled(server.rss_bytes)
    count = max(1, round(sizes.rate * sizes.seconds))
    shares = [n for n in split(sizes.clients, client_processes) if n]
    firsts = [sum(shares[:i]) for i in range(len(shares))]
    jobs = [
        {
            "op": "fanout",
            "urls": server.urls(),
            "clients": n,
            "first": first,
            "topic": server.spec.topic,
            "sources": sizes.sources,
        }
        for n, first in zip(shares, firsts, strict=True)
    ]
    started = time.monotonic()
    connect_cpu = server.cpu_seconds()
    ready = load.prepare(jobs, CONNECT_TIMEOUT)
    connect_seconds = time.monotonic() - started
    connect_cpu = server.cpu_seconds() - connect_cpu
    rss_after = settled(server.rss_bytes)
    per_process = connections_by_process(workers, {s.port for s in server.servers})
    connected = sum(r["connected"] for r in ready)
    meter = scenarios.Meter(server, load)
    load.go({"count": count, "deadline": CONNECT_TIMEOUT + sizes.seconds + sizes.grace})
    server.publish(sizes.rate, count, timeout=CONNECT_TIMEOUT + sizes.seconds)
    load.tell({"op": "published", "grace": sizes.grace})
    results, _ = load.results(CONNECT_TIMEOUT + sizes.seconds + sizes.grace)
    usage = meter.finish()
    tally = scenarios.fanout_tally(ready, results, count, sizes.rate)
    received = tally["received"]
    return {
        **tally,
        "wanted": sizes.clients,
        "server_processes": len(workers),
        "client_processes": len(jobs),
        "sources": sizes.sources,
        "connections_per_process": sorted(per_process, reverse=True),
        "room_per_process": connections_per_process(),
        "connect_seconds": connect_seconds,
        "connect_server_cpu_seconds": connect_cpu,
        "rss_before_mb": rss_before / 2**20,
        "rss_after_mb": rss_after / 2**20,
        "kb_per_connection": (rss_after - rss_before) / 1024 / connected if connected else math.nan,
        "lossless": connected == sizes.clients and tally["gaps"] == 0 and received == tally["expected"],
        "server_cpu_us_per_delivery": 1e6 * usage["server_cpu_seconds"] / received if received else math.nan,
        **usage,
    }


def measure(project: ProjectEnvironment, profile: str, progress: Callable[[str], None]) -> Result | None:
    """Both sides at the profile's size, each freshly started; None if the profile has no size."""
    sizes = SIZES[profile]
    if sizes is None:
        return None
    room = connections_per_process()  # raises the soft limit, which the servers started below inherit
    servers = processes_for(sizes.clients, sizes.server_processes, room, HEADROOM)
    clients = processes_for(sizes.clients, sizes.client_processes, room, 1.0)
    found: Result = {**dataclasses.asdict(sizes), "server_processes": servers, "client_processes": clients}
    with LoadGenerator(clients) as load:
        for side in SIDES:
            with started(side, servers, project) as server:
                found[side] = measure_side(server, load, sizes, clients)
            progress(f"many {sizes.clients:,} ({side}): {line(found[side])}")
    return found


def split_text(r: Result) -> str:
    return " / ".join(f"{n:,}" for n in r["connections_per_process"])


def line(r: Result) -> str:
    return (
        f"{r['clients']:,} connected in {r['connect_seconds']:.0f} s over {r['server_processes']} processes "
        f"({split_text(r)}), {r['kb_per_connection']:.1f} KB each; "
        f"push {r['rate']:g}/s: {'lossless' if r['lossless'] else 'LOSS'} ({r['received']:,} of "
        f"{r['expected']:,}), p99 {r['p99_ms']:,.0f} ms"
    )


def summary(found: Result) -> str:
    return "; ".join(
        f"{side} {found[side]['kb_per_connection']:.1f} KB/conn" for side in SIDES if side in found
    )


def _fmt(value: float, spec: str) -> str:
    return "-" if isinstance(value, float) and math.isnan(value) else format(value, spec)


LABELS = {
    "baseline": "baseline (websockets), {n} processes, an even share each",
    "project": "project (make serve's server), WEB_CONCURRENCY={n}",
}


def table(found: Result) -> list[str]:
    """Both sides: connections held and their split, memory, and the push to all of them."""
    lines = [
        "| server | connected / wanted | connections per process | connect s | RSS before → after MB "
        "| KB per connection | push: received / expected | lost % | p99 ms | server CPU µs / delivery "
        "| load gen CPU % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for side in SIDES:
        r = found.get(side)
        if r is None:
            continue
        failures = f" ({sum(r['failures'].values()):,} failed: {r['failures']})" if r["failures"] else ""
        label = LABELS[side].format(n=r["server_processes"])
        lines.append(
            f"| {label} | {r['clients']:,} / {r['wanted']:,}{failures} "
            f"| {split_text(r)} | {r['connect_seconds']:.1f} "
            f"| {r['rss_before_mb']:.0f} → {r['rss_after_mb']:.0f} | {_fmt(r['kb_per_connection'], '.1f')} "
            f"| {r['received']:,} / {r['expected']:,} | {r['lost_pct']:.2f} | {_fmt(r['p99_ms'], '.0f')} "
            f"| {_fmt(r['server_cpu_us_per_delivery'], '.1f')} | {r['loadgen_cpu_pct']:.0f} |"
        )
    return lines


METHOD = """\
{clients:,} idle connections on this machine, where one process may hold at most {room:,} (the hard
open-files limit, less descriptors for everything else): the project's production server with
`WEB_CONCURRENCY={server_processes}` (uvicorn's workers accept on one shared socket; "connections per
process" counts each worker's descriptors of established connections to the server's port, from
/proc, largest first), against
{server_processes} baseline processes on ports of their own, each given an even share of the clients.
Clients: {client_processes} load-generator processes (`bench/client.py`, each within its own limit),
connecting from {sources} loopback source addresses (127.0.0.2 on), 200 handshakes at a time per
process. KB per connection is the server's whole process tree's RSS (each process once) once it
settled with every client connected, minus the same before any connected, over the connections. Then
{rate:g} frame/s for {seconds:g} s to every client (project: `push_data` through Redis; baseline: each
process's in-process broadcast, all started together): lossless means every client got every seq
(none missing {grace:g} s after the publisher finished). Target (issue 23): {target:,} held, lossless,
<= {kb:g} KB per connection."""
