"""REDIS_URL's three kinds, and the stream contract across a promotion (a replica made master).

The promotion here is done by hand (``REPLICAOF NO ONE``, what Sentinel and Cluster do on a
failover) on two embedded servers, so this runs on every machine; ``test_redis_failover.py`` does
it with real Sentinels and a real Cluster.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from echo.layer.channel_layer import RedisFanoutChannelLayer
from echo.layer.redis_target import parse_redis_url
from scripts.redis_server import RedisServer
from tests.helpers.processes import timeout

TEXT = ('{"type":"data","epoch":"', '","seq":', "}")


def test_a_plain_url_is_one_server() -> None:
    target = parse_redis_url("redis://:secret@127.0.0.1:6380/2")
    assert (target.kind, target.sharded) == ("server", False)


def test_a_sentinel_url_names_its_sentinels_service_and_database() -> None:
    target = parse_redis_url(
        "redis+sentinel://u:p%40ss@10.0.0.1:26379,[::1]:26380/mymaster/3?sentinel_password=s"
    )
    assert target.kind == "sentinel"
    assert target.nodes == (("10.0.0.1", 26379), ("::1", 26380))
    assert (target.service, target.db, target.username, target.password) == ("mymaster", 3, "u", "p@ss")
    assert target.sentinel_auth == {"password": "s"}


def test_a_cluster_url_names_its_seeds_and_is_sharded() -> None:
    target = parse_redis_url("redis+cluster://10.0.0.1:7000,10.0.0.2:7001")
    assert (target.kind, target.sharded, target.nodes) == (
        "cluster",
        True,
        (("10.0.0.1", 7000), ("10.0.0.2", 7001)),
    )


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://10.0.0.1:26379", "needs the service name"),
        ("redis+sentinel://10.0.0.1/mymaster", "addresses are HOST:PORT"),
        ("redis+cluster://", "at least one HOST:PORT"),
        ("redis+cluster://10.0.0.1:7000/1", "takes no database"),
        ("redis+cluster://:hunter2@10.0.0.1:x", "addresses are HOST:PORT"),
    ],
)
def test_a_malformed_url_says_what_is_wrong_without_its_password(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as raised:
        parse_redis_url(url)
    assert "hunter2" not in str(raised.value)


@pytest.fixture
def master_and_replica() -> Iterator[tuple[RedisServer, RedisServer]]:
    servers = [RedisServer(), RedisServer()]
    for server in servers:
        server.start()
    master, replica = servers
    client = redis.Redis(port=replica.port)
    client.replicaof("127.0.0.1", master.port)
    deadline = time.monotonic() + timeout(10)
    while client.info("replication").get("master_link_status") != "up":
        assert time.monotonic() < deadline, "the replica did not connect to its master"
        time.sleep(0.05)
    client.close()
    yield master, replica
    for server in servers:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


@pytest.mark.system
async def test_a_promoted_replica_starts_new_epochs_instead_of_numbering_again(master_and_replica) -> None:
    """Replication is asynchronous: the old master's last seqs may be missing on the promoted replica.
    Numbering on from what it has would give those seqs to other data, which clients would drop as
    duplicates; so each stream starts a new epoch there, on its first read or its first publish."""
    master, replica = master_and_replica
    prefix = f"promotion-{uuid.uuid4().hex[:8]}"
    read_first, sent_first = "topic.read-first", "topic.sent-first"
    old_layer = RedisFanoutChannelLayer([master.url], prefix=prefix)
    for group in (read_first, sent_first):
        for _ in range(3):
            old_epoch, _ = await old_layer.group_send_numbered(group, "relay", TEXT)
    assert redis.Redis(port=master.port).execute_command("WAIT", 1, int(timeout(5) * 1000)) == 1
    # What a failover does to the replica: it becomes a master (its replication ID changes).
    redis.Redis(port=replica.port).replicaof("NO", "ONE")

    new_layer = RedisFanoutChannelLayer([replica.url], prefix=prefix)
    found = await new_layer.group_history(read_first, after=0)
    assert (found.seq, found.entries) == (0, [])
    assert found.epoch is not None and found.epoch != (await old_layer.group_history(read_first)).epoch
    assert await new_layer.group_send_numbered(read_first, "relay", TEXT) == (found.epoch, 1)

    epoch, seq = await new_layer.group_send_numbered(sent_first, "relay", TEXT)
    assert seq == 1 and epoch not in (old_epoch, found.epoch)
    # Once started, the new epochs continue: no new epoch per message.
    assert await new_layer.group_send_numbered(sent_first, "relay", TEXT) == (epoch, 2)
    await old_layer.flush()
    await new_layer.flush()


@pytest.mark.system
async def test_a_server_restarted_with_its_data_continues_its_streams(tmp_path) -> None:
    """Its replication ID changes too, but it was not promoted: its streams are its own, go on."""
    server = RedisServer(persistent=True)
    server.start()
    try:
        layer = RedisFanoutChannelLayer([server.url], prefix=f"restart-{uuid.uuid4().hex[:8]}")
        epoch, _ = await layer.group_send_numbered("topic.kept", "relay", TEXT)
        await layer.flush()
        server.restart(keep_data=True)
        layer = RedisFanoutChannelLayer([server.url], prefix=layer.prefix)
        assert await layer.group_send_numbered("topic.kept", "relay", TEXT) == (epoch, 2)
        await layer.flush()
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
