"""Redis Cluster against one Redis server: publish throughput and fan-out, same binary, same run.

Two Redis deployments are started by the scenario from the same ``redis-server`` (7 or newer:
sharded pub/sub), side by side, each with nothing else on it: one server on a free port, and a
Cluster of ``masters`` masters without replicas (``scripts.redis_topology``). On each in turn:

* publish throughput: ``publishers`` processes, each with ``tasks`` concurrent publishing coroutines,
  call the project's own numbered path (``RedisFanoutChannelLayer.group_send_numbered``, as
  ``manage.py push_data`` does) as fast as they can for ``seconds``, over ``topics`` topics so that
  the topics spread over the shards. Once with nothing subscribed, and once with ``subscribers``
  drain connections per Redis node subscribed to every topic, standing in for that many server
  processes (each takes every message of every topic once, as this layer's processes do); a drain
  counts what it reads and parses nothing.
* fan-out: one production server process (as every other scenario starts it, ``REDIS_URL`` pointing
  at the deployment) with ``clients`` clients spread over ``fan_topics`` topics, a publisher at a
  total of ``rate`` messages/s over those topics: delivered/s, loss, p50/p99 latency.

Beside every figure, each Redis node's own CPU (``INFO cpu``: user + sys, before and after) and the
scripts it ran (``INFO commandstats``: one EVALSHA per numbered message), so the per-shard load is
seen even where the load generator, sharing the machine's cores, is what limits the rate. Every
cluster figure is given as a ratio to the single server's, measured in the same invocation.

The publishers and drains are this module run as a program (``python -m bench.shards JOB``, a JSON
job): they print ``{"event": "ready"}``, wait for a line on stdin, then measure and print
``{"event": "result", ...}``. Without a redis-server 7 the scenario is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from bench import scenarios
from bench.loadgen import LoadGenerator, split
from bench.servers import ROOT, ProjectEnvironment, RunningServer, ServerSpec, new_layer_prefix, running
from bench.stats import latency_summary
from scripts import redis_server, redis_topology

Result = dict[str, Any]
DEPLOYMENTS = ("single", "cluster")
LABELS = {"single": "one redis-server", "cluster": "Redis Cluster"}
# A worker that says nothing for this long (start-up, a measurement, a drain's end) has failed.
WORKER_TIMEOUT = 120.0


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much each measurement does, per profile."""

    masters: int
    topics: int  # publish throughput: topics published to, round robin
    publishers: int  # publisher processes
    tasks: int  # concurrent publishing coroutines per process
    seconds: float
    subscribers: int  # drain connections per Redis node, each subscribed to every topic
    clients: int  # fan-out: clients, spread evenly over fan_topics
    fan_topics: int
    rate: float  # fan-out: messages/s over all fan_topics together
    fan_seconds: float
    grace: float
    idle_seconds: float  # Redis CPU with nothing to do (a Cluster's bus, cron), shown beside the rest


SIZES = {
    "quick": Sizes(
        masters=3, topics=64, publishers=2, tasks=8, seconds=3, subscribers=4,
        clients=500, fan_topics=20, rate=500, fan_seconds=5, grace=5, idle_seconds=1,
    ),
    "full": Sizes(
        masters=3, topics=64, publishers=2, tasks=8, seconds=10, subscribers=8,
        clients=1000, fan_topics=20, rate=1000, fan_seconds=10, grace=5, idle_seconds=2,
    ),
    "smoke": Sizes(
        masters=3, topics=6, publishers=1, tasks=2, seconds=0.5, subscribers=1,
        clients=6, fan_topics=3, rate=30, fan_seconds=0.5, grace=2, idle_seconds=0.2,
    ),
}  # fmt: skip

METHOD = """\
Both Redis deployments run the same `redis-server` ({redis}), started by the scenario on free
loopback ports with no persistence: one server, and a Cluster of {masters} masters without replicas
(`scripts.redis_topology`); their CPU with nothing to do is shown under the tables. Publish
throughput: {publishers} processes x {tasks} coroutines call the layer's `group_send_numbered` (the
path `manage.py push_data` takes: one Lua script numbers, stores in history and publishes each
message) as fast as they can for {seconds:g} s, round robin over {topics} topics; then again with
{subscribers} drain connections per Redis node subscribed to every topic (standing in for
{subscribers} server processes; they count messages and parse nothing). Fan-out: one production
server process (`WEB_CONCURRENCY=1`) with `REDIS_URL` set to the deployment, {clients:,} clients
spread over {fan_topics} topics (one load-generator process per topic), a publisher at {rate:g}
messages/s in total for {fan_seconds:g} s; loss and latency as in the fan-out table. Redis CPU is
each node's `INFO cpu` (user + sys) over the window, as % of one core; "µs / msg" is that CPU over
the numbering scripts the node ran (EVALSHA calls). **The load generator, the publishers, the
server and every Redis node share this machine's cores**: the cluster cannot show its full scaling
here, so read the per-node CPU beside the rates."""


# ---------------------------------------------------------------------------------------------------
# The Redis deployments


@dataclasses.dataclass
class Deployment:
    """One Redis deployment under test: its ``REDIS_URL`` and the data nodes to read ``INFO`` from."""

    name: str
    url: str
    nodes: list[redis_server.RedisNode]
    sharded: bool

    def usage(self) -> dict[int, tuple[float, int]]:
        """Per node (by port): CPU seconds used so far (user + sys) and numbering scripts run."""
        found = {}
        for node in self.nodes:
            cpu: dict[str, Any] = node.info("cpu")
            stats: dict[str, Any] = node.info("commandstats")
            scripts = sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval"))
            found[node.port] = (float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), int(scripts))
        return found

    def slots(self) -> list[tuple[int, int, int]]:
        """``(first, last, port)`` of every slot range (``CLUSTER SLOTS``); empty for one server."""
        if not self.sharded:
            return []
        ranges = self.nodes[0].call("CLUSTER", "SLOTS")
        assert isinstance(ranges, list)
        return [(int(first), int(last), int(owner[1])) for first, last, owner, *_ in ranges]


@contextlib.contextmanager
def deployments(binary: str, masters: int) -> Iterator[dict[str, Deployment]]:
    """Start one redis-server and a ``masters``-master Cluster of the same binary; stop both after."""
    single = redis_server.RedisNode(
        binary, "bench-single", redis_server.COMMON_ARGUMENTS, redis_server.READY_LINE
    )
    try:
        redis_server.start_nodes([single], 30.0)
        with redis_topology.RedisCluster(masters=masters, replicas_per_master=0, binary=binary) as cluster:
            yield {
                "single": Deployment(
                    "single", f"redis://{redis_server.HOST}:{single.port}/0", [single], False
                ),
                "cluster": Deployment("cluster", cluster.url, cluster.masters(), True),
            }
    finally:
        single.remove()


def shard_usage(
    before: dict[int, tuple[float, int]], after: dict[int, tuple[float, int]], seconds: float
) -> list[Result]:
    """Each node's CPU and scripts over a window, busiest first."""
    shards = []
    for port, (cpu_after, scripts_after) in after.items():
        cpu = cpu_after - before[port][0]
        scripts = scripts_after - before[port][1]
        shards.append(
            {
                "port": port,
                "cpu_seconds": cpu,
                "cpu_pct": 100 * cpu / seconds if seconds else math.nan,
                "scripts": scripts,
                "us_per_message": 1e6 * cpu / scripts if scripts else math.nan,
            }
        )
    return sorted(shards, key=lambda s: -s["cpu_seconds"])


# ---------------------------------------------------------------------------------------------------
# The controller's side


def idle_cpu_pct(deployment: Deployment, seconds: float) -> float:
    """Redis CPU (all nodes) over ``seconds`` with no client doing anything, as % of one core."""
    before, started = deployment.usage(), time.monotonic()
    time.sleep(seconds)
    shards = shard_usage(before, deployment.usage(), time.monotonic() - started)
    return sum(s["cpu_pct"] for s in shards)


class Worker:
    """A ``python -m bench.shards`` process running one job: ready, go, result."""

    def __init__(self, job: Result) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.shards", json.dumps(job)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def expect(self, event: str) -> Result:
        """The worker's next line, which must be ``event``; raise if it exits or says something else."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        message = json.loads(line) if line else None
        if message is None or message.get("event") != event:
            self.process.kill()
            raise RuntimeError(f"bench.shards worker answered {message!r} instead of {event!r}")
        return message

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def finish(self) -> Result:
        result = self.expect("result")
        self.process.wait(WORKER_TIMEOUT)
        return result


def topic_names(kind: str, count: int) -> list[str]:
    return [f"{kind}-{n:02d}" for n in range(count)]


def flood(deployment: Deployment, sizes: Sizes, subscribers: int) -> Result:
    """Publish as fast as the publishers can for ``sizes.seconds``: messages/s and per-node Redis CPU."""
    prefix = new_layer_prefix()
    topics = topic_names("flood", sizes.topics)
    common = {"url": deployment.url, "prefix": prefix, "topics": topics}
    drains = [
        Worker({"op": "drain", **common, "connections": subscribers, "nodes": drain_nodes(deployment)})
        for _ in range(1 if subscribers else 0)
    ]
    for drain in drains:
        drain.expect("ready")
    publishers = [
        Worker({"op": "flood", **common, "tasks": sizes.tasks, "seconds": sizes.seconds, "offset": n})
        for n in range(sizes.publishers)
    ]
    try:
        for publisher in publishers:
            publisher.expect("ready")
        before, started = deployment.usage(), time.monotonic()
        for publisher in publishers:
            publisher.go()
        results = [publisher.finish() for publisher in publishers]
        elapsed = time.monotonic() - started
        after = deployment.usage()
        for drain in drains:
            drain.go()
        drained = sum(drain.finish()["messages"] for drain in drains)
    finally:
        for worker in publishers + drains:
            if worker.process.poll() is None:
                worker.process.kill()
    messages = sum(r["messages"] for r in results)
    shards = shard_usage(before, after, elapsed)
    redis_cpu = sum(s["cpu_seconds"] for s in shards)
    return {
        "subscribers": subscribers,
        "messages": messages,
        "seconds": elapsed,
        "msgs_per_s": messages / max(r["seconds"] for r in results),
        "publisher_cpu_pct": 100 * sum(r["cpu_seconds"] for r in results) / elapsed,
        "redis_cpu_pct": 100 * redis_cpu / elapsed,
        "redis_us_per_message": 1e6 * redis_cpu / messages if messages else math.nan,
        # What the drains read, over what they should have: each message once per drain connection.
        "drained": drained,
        # (The publishers' warm-up, one message per topic each, reaches the drains too.)
        "drained_expected": (messages + len(topics) * sizes.publishers) * subscribers,
        "shards": shards,
    }


def drain_nodes(deployment: Deployment) -> Result:
    """Where a drain subscribes: the nodes' ports, and on a Cluster which slots each owns."""
    return {"ports": [node.port for node in deployment.nodes], "slots": deployment.slots()}


def fanout(server: RunningServer, deployment: Deployment, load: LoadGenerator, sizes: Sizes) -> Result:
    """``sizes.clients`` clients over ``sizes.fan_topics`` topics, one load-generator worker per topic."""
    topics = topic_names("fan", sizes.fan_topics)
    per_topic_rate = sizes.rate / len(topics)
    count = max(1, round(per_topic_rate * sizes.fan_seconds))
    jobs = [
        {"op": "fanout", "url": server.url(f"/ws/echo/?topics={topic}"), "clients": n, "topic": topic}
        for topic, n in zip(topics, split(sizes.clients, len(topics)), strict=True)
        if n
    ]
    ready = load.prepare(jobs, scenarios.CONNECT_TIMEOUT)
    publisher = Worker(
        {
            "op": "paced",
            "url": deployment.url,
            "prefix": server.env["CHANNEL_LAYER_PREFIX"],
            "topics": topics,
            "rate": sizes.rate,
            "count": count,
        }
    )
    try:
        publisher.expect("ready")
        before = deployment.usage()
        meter = scenarios.Meter(server, load)
        load.go({"count": count, "deadline": scenarios.CONNECT_TIMEOUT + sizes.fan_seconds + sizes.grace})
        publisher.go()
        published = publisher.finish()
        load.tell({"op": "published", "grace": sizes.grace})
        results, _ = load.results(scenarios.CONNECT_TIMEOUT + sizes.fan_seconds + sizes.grace)
        usage = meter.finish()
        after = deployment.usage()
    finally:
        if publisher.process.poll() is None:
            publisher.process.kill()
    tally = scenarios.fanout_tally(ready, results, count, per_topic_rate)
    received = tally["received"]
    shards = shard_usage(before, after, usage["seconds"])
    return {
        **tally,
        "topics": len(topics),
        "total_rate": sizes.rate,
        "publisher_late_ms": published["late_ms"],
        "server_cpu_us_per_delivery": 1e6 * usage["server_cpu_seconds"] / received if received else math.nan,
        **usage,
        "redis_cpu_pct": sum(s["cpu_pct"] for s in shards),
        "shards": shards,
    }


def measure(
    project: ProjectEnvironment, spec: ServerSpec, profile: str, progress: Callable[[str], None]
) -> Result:
    """Both deployments, each measured in full; ``{"skipped": why}`` without a redis-server 7."""
    sizes = SIZES[profile]
    binary = redis_server.find_redis_server()
    if binary is None:
        return {"skipped": redis_server.missing_redis_server() or "no redis-server 7"}
    version = ".".join(map(str, redis_server.redis_server_version(binary) or ()))
    result: Result = {"sizes": dataclasses.asdict(sizes), "redis": f"{version}, {binary}"}
    with deployments(binary, sizes.masters) as found, LoadGenerator(sizes.fan_topics) as load:
        for name in DEPLOYMENTS:
            deployment = found[name]
            side: Result = {"url": deployment.url, "nodes": len(deployment.nodes)}
            side["idle_redis_cpu_pct"] = idle_cpu_pct(deployment, sizes.idle_seconds)
            result[name] = side
            side["flood"] = flood(deployment, sizes, 0)
            progress(f"shards {name}: publish {line_flood(side['flood'])}")
            side["flood_subscribed"] = flood(deployment, sizes, sizes.subscribers)
            subscribed = line_flood(side["flood_subscribed"])
            progress(f"shards {name}: publish, {sizes.subscribers} subscribers per node: {subscribed}")
            env = {**project.env, "REDIS_URL": deployment.url}
            with running(spec, dataclasses.replace(project, redis_url=deployment.url, env=env)) as server:
                side["fanout"] = fanout(server, deployment, load, sizes)
            progress(f"shards {name}: fan-out {line_fanout(side['fanout'])}")
    result["ratios"] = ratios(result)
    return result


# The figures compared, cluster over single: (measurement, key, what it is, format).
COMPARED = (
    ("flood", "msgs_per_s", "publish, no subscribers: messages/s", ",.0f"),
    ("flood", "redis_us_per_message", "publish, no subscribers: Redis CPU µs / message", ".1f"),
    ("flood_subscribed", "msgs_per_s", "publish, with subscribers: messages/s", ",.0f"),
    ("flood_subscribed", "redis_us_per_message", "publish, with subscribers: Redis CPU µs / message", ".1f"),
    ("fanout", "deliveries_per_s", "fan-out: deliveries/s", ",.0f"),
    ("fanout", "lost_pct", "fan-out: lost %", ".2f"),
    ("fanout", "p50_ms", "fan-out: p50 ms", ".1f"),
    ("fanout", "p99_ms", "fan-out: p99 ms", ".1f"),
    ("fanout", "server_cpu_us_per_delivery", "fan-out: server CPU µs / delivery", ".1f"),
    ("fanout", "redis_cpu_pct", "fan-out: Redis CPU % (all nodes)", ".1f"),
)


def ratios(result: Result) -> dict[str, float]:
    """Each compared figure's cluster / single ratio, keyed ``measurement.key``."""
    found = {}
    for measurement, key, _, _ in COMPARED:
        single, cluster = result["single"][measurement][key], result["cluster"][measurement][key]
        found[f"{measurement}.{key}"] = cluster / single if single else math.nan
    return found


# ---------------------------------------------------------------------------------------------------
# The report


def _fmt(value: float, spec: str) -> str:
    return "-" if isinstance(value, float) and math.isnan(value) else format(value, spec)


def shards_cell(shards: Sequence[Result]) -> str:
    """Per node: CPU % / scripts per second / µs per script."""
    return "<br>".join(f"{s['cpu_pct']:.0f} % · {_fmt(s['us_per_message'], '.1f')} µs/msg" for s in shards)


def table(result: Result) -> list[str]:
    """Publish throughput and fan-out per deployment, then the cluster / single ratios."""
    if "skipped" in result:
        return [f"Skipped: {result['skipped']}."]
    lines = [
        "| publish throughput | deployment | messages/s | publisher CPU % | Redis CPU % (all nodes) "
        "| Redis µs / msg | per node: CPU %, µs / msg | drained / expected |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for measurement in ("flood", "flood_subscribed"):
        for name in DEPLOYMENTS:
            r = result[name][measurement]
            what = "no subscribers" if not r["subscribers"] else f"{r['subscribers']} subscribers per node"
            drained = f"{r['drained']:,} / {r['drained_expected']:,}" if r["subscribers"] else "-"
            lines.append(
                f"| {what} | {LABELS[name]} ({result[name]['nodes']} node(s)) | {r['msgs_per_s']:,.0f} "
                f"| {r['publisher_cpu_pct']:.0f} | {r['redis_cpu_pct']:.0f} "
                f"| {_fmt(r['redis_us_per_message'], '.1f')} | {shards_cell(r['shards'])} | {drained} |"
            )
    lines += [
        "",
        "| fan-out | deliveries/s (offered) | lost % | p50 ms | p99 ms | server CPU µs / delivery "
        "| server CPU % | load gen CPU % | Redis CPU % | per node: CPU %, µs / msg |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in DEPLOYMENTS:
        r = result[name]["fanout"]
        lines.append(
            f"| {LABELS[name]}: {r['clients']:,} clients, {r['topics']} topics, {r['total_rate']:g} msgs/s "
            f"| {_fmt(r['deliveries_per_s'], ',.0f')} ({r['offered_per_s']:,.0f}) | {r['lost_pct']:.2f} "
            f"| {_fmt(r['p50_ms'], '.1f')} | {_fmt(r['p99_ms'], '.1f')} "
            f"| {_fmt(r['server_cpu_us_per_delivery'], '.1f')} | {r['server_cpu_pct']:.0f} "
            f"| {r['loadgen_cpu_pct']:.0f} | {r['redis_cpu_pct']:.1f} | {shards_cell(r['shards'])} |"
        )
    idle = ", ".join(f"{LABELS[name]} {result[name]['idle_redis_cpu_pct']:.1f} %" for name in DEPLOYMENTS)
    lines += [
        "",
        f"Redis CPU with nothing to do, all nodes: {idle}.",
        "",
        "| figure | one redis-server | Redis Cluster | cluster / single |",
        "|---|---|---|---|",
    ]
    for measurement, key, what, spec in COMPARED:
        single, cluster = result["single"][measurement][key], result["cluster"][measurement][key]
        ratio = _fmt(result["ratios"][f"{measurement}.{key}"], ".2f")
        lines.append(f"| {what} | {_fmt(single, spec)} | {_fmt(cluster, spec)} | **{ratio}x** |")
    return lines


def line_flood(r: Result) -> str:
    return (
        f"{r['msgs_per_s']:,.0f} msgs/s, Redis {r['redis_cpu_pct']:.0f} % CPU "
        f"({' / '.join(format(s['cpu_pct'], '.0f') for s in r['shards'])}), "
        f"{r['redis_us_per_message']:.1f} µs/msg, publishers {r['publisher_cpu_pct']:.0f} %"
    )


def line_fanout(r: Result) -> str:
    return (
        f"{r['deliveries_per_s']:,.0f}/s, lost {r['lost_pct']:.2f} %, p50 {r['p50_ms']:.0f} ms, "
        f"p99 {r['p99_ms']:.0f} ms, {r['server_cpu_us_per_delivery']:.1f} µs/delivery"
    )


def summary(result: Result) -> str:
    """One progress line: the ratios."""
    if "skipped" in result:
        return f"skipped: {result['skipped']}"
    return ", ".join(f"{key} {_fmt(value, '.2f')}x" for key, value in result["ratios"].items())


# ---------------------------------------------------------------------------------------------------
# The worker's side: python -m bench.shards JOB


async def until_go() -> None:
    """Wait for the controller's go line (any line; end of input counts too)."""
    await asyncio.to_thread(sys.stdin.readline)


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def new_layer(job: Result) -> Any:
    """The project's layer on the job's Redis and prefix, as the server and push_data make it."""
    from echo.layer.channel_layer import RedisFanoutChannelLayer

    return RedisFanoutChannelLayer([job["url"]], prefix=job["prefix"])


async def run_flood(job: Result) -> None:
    """Warm up (one message per topic), then publish from ``tasks`` coroutines for ``seconds``."""
    from echo.protocol import RELAY_EVENT, encode_data_frame_around_position, topic_group

    layer = new_layer(job)
    topics: list[str] = job["topics"]
    texts = [(topic_group(t), encode_data_frame_around_position(t, time.time(), {"v": 1.5})) for t in topics]
    for group, text in texts:
        await layer.group_send_numbered(group, RELAY_EVENT, text)
    emit("ready")
    await until_go()
    started, cpu = time.monotonic(), time.process_time()
    stop_at = started + job["seconds"]

    async def publish(first: int) -> int:
        sent, index = 0, first
        while time.monotonic() < stop_at:
            group, text = texts[index % len(texts)]
            await layer.group_send_numbered(group, RELAY_EVENT, text)
            sent, index = sent + 1, index + 1
        return sent

    tasks = job["tasks"]
    counts = await asyncio.gather(*(publish(job["offset"] * tasks + n) for n in range(tasks)))
    emit(
        "result",
        messages=sum(counts),
        seconds=time.monotonic() - started,
        cpu_seconds=time.process_time() - cpu,
    )


async def run_paced(job: Result) -> None:
    """Publish ``count`` messages per topic, round robin, at ``rate`` in total, each stamped as sent."""
    from echo.protocol import RELAY_EVENT, encode_data_frame_around_position, topic_group

    layer = new_layer(job)
    topics: list[str] = job["topics"]
    await layer.redis().ping()
    emit("ready")
    await until_go()
    total = job["count"] * len(topics)
    interval = 1 / job["rate"]
    started = time.monotonic()
    late: list[float] = []
    for n in range(total):
        due = started + n * interval
        if (wait := due - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        else:
            late.append(-wait)
        topic = topics[n % len(topics)]
        text = encode_data_frame_around_position(topic, time.time(), {"v": float(n)})
        await layer.group_send_numbered(topic_group(topic), RELAY_EVENT, text)
    emit("result", published=total, late_ms=latency_summary(late)["p99_ms"] if late else 0.0)


async def run_drain(job: Result) -> None:
    """``connections`` connections per node, each subscribed to the topics' channels that node owns;
    count the messages read (by their ``message`` marker, parsing nothing) until the go line."""
    from redis.crc import key_slot

    from echo.protocol import topic_group

    layer = new_layer(job)
    channels = [layer.group_channel(topic_group(t)) for t in job["topics"]]
    ports, slots = job["nodes"]["ports"], job["nodes"]["slots"]
    # One server: SUBSCRIBE (the layer PUBLISHes); a Cluster node: SSUBSCRIBE to the channels it owns.
    command = "SSUBSCRIBE" if slots else "SUBSCRIBE"
    counters: list[MarkerCounter] = []
    readers: list[asyncio.Task[None]] = []
    # Held until the end: a StreamWriter closes its connection when it is garbage-collected.
    writers: list[asyncio.StreamWriter] = []
    for port in ports:
        owned = [c for c in channels if not slots or _owner(slots, key_slot(c.encode())) == port]
        for _ in range(job["connections"] if owned else 0):
            counter = MarkerCounter(b"message\r\n")
            reader, writer = await _subscribed(port, command, owned)
            writers.append(writer)
            counters.append(counter)
            readers.append(asyncio.create_task(_count(reader, counter)))
    emit("ready")
    await until_go()
    # Whatever is still in flight arrives within a moment of the publishers' end.
    await asyncio.sleep(0.5)
    emit("result", messages=sum(counter.count for counter in counters))
    for task in readers:
        task.cancel()
    for writer in writers:
        writer.close()


def _owner(slots: list[list[int]], slot: int) -> int:
    return next(port for first, last, port in slots if first <= slot <= last)


class MarkerCounter:
    """Counts a marker in a byte stream read in chunks, a marker split between two chunks included."""

    def __init__(self, marker: bytes) -> None:
        self.marker, self.tail, self.count = marker, b"", 0

    def feed(self, chunk: bytes) -> None:
        joined = self.tail + chunk
        self.count += joined.count(self.marker) - self.tail.count(self.marker)
        self.tail = joined[-len(self.marker) + 1 :]


async def _subscribed(
    port: int, command: str, channels: list[str]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection subscribed to ``channels`` (one command each: a Cluster wants one slot per
    command), once Redis has confirmed them all (only messages come after the confirmations)."""
    reader, writer = await asyncio.open_connection(redis_server.HOST, port)
    for channel in channels:
        writer.write(f"*2\r\n${len(command)}\r\n{command}\r\n${len(channel)}\r\n{channel}\r\n".encode())
    await writer.drain()
    confirmations = MarkerCounter(b"subscribe\r\n")
    while confirmations.count < len(channels):
        chunk = await reader.read(65536)
        if not chunk:
            raise ConnectionError(f"Redis at port {port} closed a drain connection while subscribing")
        confirmations.feed(chunk)
    return reader, writer


async def _count(reader: asyncio.StreamReader, counter: MarkerCounter) -> None:
    with contextlib.suppress(OSError):
        while chunk := await reader.read(1 << 20):
            counter.feed(chunk)


def main(argv: Sequence[str]) -> None:
    """Run one worker job given as JSON."""
    job = json.loads(argv[0])
    runners = {"flood": run_flood, "paced": run_paced, "drain": run_drain}
    try:
        import uvloop
    except ImportError:
        asyncio.run(runners[job["op"]](job))
    else:
        uvloop.run(runners[job["op"]](job))


if __name__ == "__main__":
    main(sys.argv[1:])
