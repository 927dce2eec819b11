"""Beyond one Redis: fan-out through a Sentinel-watched master and a Redis Cluster, and a master
killed mid-stream, on real servers started here (``scripts.redis_topology``).

Two production server processes, one ``push_data`` per topic, clients recording every frame (the
chaos run's clients) and the chaos run's checker over what they received: after the failover live
data must flow again within ``RECOVERY_SECONDS`` of the promotion, what the promoted replica had not
received must be announced (a ``reset`` to a new epoch, never a renumbered stream), and on a Cluster
the topics of the other shards must not stop at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Callable

import pytest
from redis.crc import key_slot

from echo.layer.channel_layer import RedisFanoutChannelLayer
from echo.layer.events import RESYNC_EVENT
from echo.protocol import topic_group
from scripts import chaos, devenv
from scripts.chaos_check import ClientLog, Data, Published, Reset, check, final_positions
from scripts.redis_server import RedisNode
from tests.helpers.processes import SEED, Server, http_get, start_server, timeout
from tests.helpers.publishing import create_key, publish

RECOVERY_SECONDS = 10.0  # live data again after a promotion (the bound)
UNSHARDED_STALL_SECONDS = 1.0  # the longest a topic of another shard may go without a frame (20/s)
RATE = 20.0  # messages/s per topic
PREFIX = f"failover-{SEED}"
TEXT = ('{"type":"data","epoch":"', '","seq":', "}")

pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(240)]


def group_channel(topic: str) -> str:
    """The Redis channel of a topic, as the layer names it (the hash tag decides its shard)."""
    return f"{PREFIX}:group:{{{topic_group(topic)}}}"


class Run:
    """Servers, publishers and recording clients on one Redis deployment."""

    def __init__(self, redis_url: str, topics: list[str]) -> None:
        self.config = chaos.ChaosConfig(seed=SEED, history_length=100_000, capacity=1000)
        self.env = {**chaos.child_env(self.config, redis_url), "CHANNEL_LAYER_PREFIX": PREFIX}
        self.topics = topics
        self.clock = chaos.Clock()
        self.progress = asyncio.Event()
        self.servers: list[Server] = []
        self.publishers = [chaos.Publisher(f"push-{t}", t, RATE, self.env, self.clock) for t in topics]
        self.clients: list[chaos.ChaosClient] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.api_published: list[Published] = []  # what the test published through the HTTP API

    def logs(self) -> list[ClientLog]:
        return [client.log() for client in self.clients]

    def data(self, client: chaos.ChaosClient, topic: str, after: float = 0.0) -> list[Data]:
        return [r for r in client.records if isinstance(r, Data) and r.topic == topic and r.t >= after]

    async def until(self, condition: Callable[[], bool], seconds: float, what: str) -> None:
        """Wait for ``condition`` (checked whenever a client received something)."""
        deadline = self.clock() + timeout(seconds)
        while not condition():
            if self.clock() > deadline:
                raise AssertionError(f"not within {seconds:g} s: {what}\n{self.describe()}")
            self.progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progress.wait(), 0.5)

    def describe(self) -> str:
        lines = []
        for client in self.clients:
            for topic in self.topics:
                frames = self.data(client, topic)
                last = f"{frames[-1].epoch}/{frames[-1].seq} at t={frames[-1].t:.2f}" if frames else "none"
                lines.append(f"{client.spec.name} {topic}: {len(frames)} frames, last {last}")
        for server in self.servers:
            lines.append("server: " + " | ".join(server.output.lines[-5:]))
        for publisher in self.publishers:
            lines.append(f"{publisher.name}: " + " | ".join(publisher.text[-3:]))
        return "\n".join(lines)


@contextlib.asynccontextmanager
async def running(redis_url: str, topics: list[str]) -> AsyncIterator[Run]:
    """Two production servers, a publisher per topic, two clients per server following every topic."""
    run = Run(redis_url, topics)
    with contextlib.ExitStack() as stack:
        for _ in range(2):
            server = stack.enter_context(start_server(devenv.production_command("127.0.0.1", "0"), run.env))
            run.servers.append(server)
        for index in range(4):
            spec = chaos.ClientSpec(f"client-{index}", "steady", tuple(topics), "127.0.0.1")
            client = chaos.ChaosClient(spec, run.servers[index % 2], run.config, run.clock, run.progress)  # type: ignore[arg-type]
            run.clients.append(client)
            run.tasks.append(asyncio.ensure_future(client.run()))
        try:
            await run.until(lambda: all(c.connected.is_set() for c in run.clients), 20, "clients connected")
            for publisher in run.publishers:
                publisher.start()
            await run.until(
                lambda: all(run.data(c, t) for c in run.clients for t in topics), 30, "every topic flowing"
            )
            yield run
        finally:
            for publisher in run.publishers:
                await asyncio.to_thread(publisher.stop)
            for task in run.tasks:
                task.cancel()
            await asyncio.gather(*run.tasks, return_exceptions=True)


async def stop_and_check(run: Run) -> None:
    """Stop publishing, let every client converge, and hold what they received against the contract."""
    for publisher in run.publishers:
        await asyncio.to_thread(publisher.stop)
    published = [line for publisher in run.publishers for line in publisher.lines] + run.api_published

    def converged() -> bool:
        # A publisher stopped between publishing and printing: a client that got that frame counts it.
        finals = final_positions(published, run.logs())
        for client in run.clients:
            for topic, final in finals.items():
                frames = run.data(client, topic)
                if not frames or (frames[-1].epoch, frames[-1].seq) != final:
                    return False
        return True

    await run.until(converged, 30, f"clients at the last published positions {final_positions(published)}")
    result = check(run.logs(), published)
    assert not result.violations, "\n".join(str(v) for v in result.violations[:20]) + "\n" + run.describe()


def first_of_new_epoch(run: Run, client: chaos.ChaosClient, topic: str, killed_at: float) -> Data | None:
    """The first frame of ``topic`` a client received of an epoch it had not seen before the kill."""
    seen = {frame.epoch for frame in run.data(client, topic) if frame.t < killed_at}
    return next((f for f in run.data(client, topic, after=killed_at) if f.epoch not in seen), None)


async def recovery(run: Run, topics: list[str], killed_at: float, promoted_at: float) -> dict[str, float]:
    """Per topic, seconds from the promotion until the last client had live data of the new epoch."""

    def recovered() -> bool:
        return all(first_of_new_epoch(run, c, t, killed_at) for c in run.clients for t in topics)

    await run.until(recovered, RECOVERY_SECONDS * 3, f"frames of a new epoch of {topics} after the failover")
    return {
        topic: max(first_of_new_epoch(run, c, topic, killed_at).t - promoted_at for c in run.clients)  # type: ignore[union-attr]
        for topic in topics
    }


def longest_silence(run: Run, topic: str, start: float, end: float) -> float:
    """The longest time any client went without a frame of ``topic`` between ``start`` and ``end``."""
    longest = 0.0
    for client in run.clients:
        frames = [frame.t for frame in run.data(client, topic, after=start) if frame.t <= end]
        longest = max(longest, *(b - a for a, b in itertools.pairwise([start, *frames, end])))
    return longest


async def the_rest_works_through(run: Run, topic: str) -> None:
    """After the failover: the publish API publishes into the new epoch, /healthz says ok, and every
    client was told who watches (presence counts, kept in the same Redis)."""
    key = await asyncio.to_thread(create_key)
    answer = await asyncio.to_thread(publish, run.servers[0], topic, {"api": 1.0}, key)
    assert answer.status == 200, answer.raw
    position = answer.json
    assert position["epoch"] == run.data(run.clients[0], topic)[-1].epoch, (position, run.describe())
    run.api_published.append(Published(run.clock(), "api", topic, position["epoch"], position["seq"]))
    for server in run.servers:
        status, body = await asyncio.to_thread(http_get, server.http_url("/healthz"))
        assert (status, json.loads(body)["status"]) == (200, "ok"), body
    assert all(client.presence > 0 for client in run.clients)


def resets(run: Run, topic: str, after: float) -> int:
    return sum(
        1
        for client in run.clients
        for r in client.records
        if isinstance(r, Reset) and r.topic == topic and r.t >= after
    )


async def test_sentinel_failover_mid_stream_is_followed_and_announced(redis_sentinel) -> None:
    topics = ["sentinel-a", "sentinel-b"]
    async with running(redis_sentinel.url, topics) as run:
        killed_at = run.clock()
        await asyncio.to_thread(redis_sentinel.kill_master)
        await asyncio.to_thread(redis_sentinel.wait_for_promotion, timeout(30))
        promoted_at = run.clock()
        recovered = await recovery(run, topics, killed_at, promoted_at)
        print(
            f"Sentinel: promoted {promoted_at - killed_at:.1f} s after the kill; data again after {recovered}"
        )
        assert max(recovered.values()) <= RECOVERY_SECONDS, (recovered, run.describe())
        # The promoted replica started a new epoch for each stream: every client was told.
        for topic in topics:
            assert resets(run, topic, killed_at) >= len(run.clients), run.describe()
        await the_rest_works_through(run, topics[0])
        await stop_and_check(run)


async def test_cluster_shard_failover_stops_only_its_own_topics(redis_cluster) -> None:
    victim = redis_cluster.master_for_key(group_channel("cluster-0"))
    own, others = [], []
    for index in range(200):
        topic = f"cluster-{index}"
        owner = redis_cluster.master_for_key(group_channel(topic))
        (own if owner == victim else others).append(topic)
        if len(own) >= 2 and len({str(redis_cluster.master_for_key(group_channel(t))) for t in others}) >= 2:
            break
    others = [t for t in others if t not in own]
    spread = {}
    for topic in others:
        spread.setdefault(str(redis_cluster.master_for_key(group_channel(topic))), topic)
    topics = own[:2] + list(spread.values())[:2]
    async with running(redis_cluster.url, topics) as run:
        killed_at = run.clock()
        killed = await asyncio.to_thread(redis_cluster.kill_master_for_key, group_channel(own[0]))
        await asyncio.to_thread(redis_cluster.wait_for_promotion, killed, timeout(30))
        promoted_at = run.clock()
        recovered = await recovery(run, own[:2], killed_at, promoted_at)
        unaffected = {topic: longest_silence(run, topic, killed_at, run.clock()) for topic in topics[2:]}
        print(
            f"Cluster: promoted {promoted_at - killed_at:.1f} s after the kill; the shard's topics again "
            f"after {recovered}; longest silence of the other shards' topics {unaffected}"
        )
        assert max(recovered.values()) <= RECOVERY_SECONDS, (recovered, run.describe())
        assert max(unaffected.values()) <= UNSHARDED_STALL_SECONDS, (unaffected, run.describe())
        for topic in own[:2]:
            assert resets(run, topic, killed_at) >= len(run.clients), run.describe()
        for topic in topics[2:]:
            assert resets(run, topic, killed_at) == 0, run.describe()
        await the_rest_works_through(run, own[0])
        await stop_and_check(run)


async def test_a_topic_whose_slot_moves_to_another_shard_is_followed(redis_cluster) -> None:
    """A resharding moves a slot (its keys, then its ownership) to another master: that node drops our
    sharded subscription (an ``sunsubscribe`` we did not ask for), and the layer subscribes again on
    the new owner and tells its members to catch up. The stream moved with its keys: same epoch."""
    prefix = f"moving-{SEED}"
    group = topic_group("moving")
    subscriber = RedisFanoutChannelLayer([redis_cluster.url], prefix=prefix)
    publisher = RedisFanoutChannelLayer([redis_cluster.url], prefix=prefix)
    channel = await subscriber.new_channel()
    await subscriber.group_add(group, channel)
    epoch, _ = await publisher.group_send_numbered(group, "relay", TEXT)
    assert (await asyncio.wait_for(subscriber.receive(channel), timeout(5)))["seq"] == 1

    redis_channel = subscriber.group_channel(group)
    source = redis_cluster.master_for_key(redis_channel)
    target = next(node for node in redis_cluster.masters() if node is not source)
    await asyncio.to_thread(move_slot, key_slot(redis_channel.encode()), source, target)
    assert redis_cluster.master_for_key(redis_channel) is target

    # The subscriber was told to catch up (it may have missed messages meanwhile), then hears the new owner.
    assert (await asyncio.wait_for(subscriber.receive(channel), timeout(10)))["type"] == RESYNC_EVENT
    assert await publisher.group_send_numbered(group, "relay", TEXT) == (epoch, 2)
    assert (await asyncio.wait_for(subscriber.receive(channel), timeout(5)))["seq"] == 2
    history = await subscriber.group_history(group, after=0)
    assert (history.epoch, [seq for seq, _ in history.entries]) == (epoch, [1, 2])
    await subscriber.flush()
    await publisher.flush()


def move_slot(slot: int, source: RedisNode, target: RedisNode) -> None:
    """What ``redis-cli --cluster reshard`` does for one slot: mark it, move its keys, hand it over."""
    target.call("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
    source.call("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
    while keys := source.call("CLUSTER", "GETKEYSINSLOT", slot, 100):
        source.call("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)  # type: ignore[misc]
    for node in (target, source):
        node.call("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
