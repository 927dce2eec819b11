"""Where Redis is: one server, a Sentinel-watched master, or a Cluster, all named by one URL.

``REDIS_URL`` (and the layer's ``hosts``) takes one of:

* ``redis://[[USER]:PASSWORD@]HOST:PORT[/DB]`` (also ``rediss://``, ``unix://``): one server.
* ``redis+sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]``: the master that the
  Sentinels at those addresses know as SERVICE, found again after a failover. The credentials are the
  master's; ``?sentinel_password=`` (and ``sentinel_username``) authenticate to the Sentinels.
* ``redis+cluster://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]``: a Redis Cluster; any reachable seed
  nodes, the rest is discovered.

Parsing happens once, at startup, so a mistake is one clear line (``ValueError``); the clients are made
here too, so every part of the project (layer, presence, rate limits, checks) reaches Redis the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis import asyncio as aioredis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.cluster import ClusterNode as SyncClusterNode
from redis.sentinel import Sentinel as SyncSentinel

Kind = Literal["server", "sentinel", "cluster"]
SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"


# Combining two of redis-py's pool classes relies on how their methods divide the work (Sentinel's
# finds the master, Blocking's waits for a free connection): checked by tests/test_internals_app.py
# against this version (requirements.txt's pin), and at startup (wsproject/versions.py).
TESTED = {"redis": "8.1.0"}


class BlockingSentinelConnectionPool(SentinelConnectionPool, BlockingConnectionPool):
    """A Sentinel-managed pool that makes a burst of callers wait for a connection instead of failing,
    as the single-server pool does (both are redis-py's public classes; this only combines them)."""


@dataclass(frozen=True)
class RedisTarget:
    """A parsed Redis URL: what kind of deployment, where, and how to authenticate."""

    kind: Kind
    url: str  # as given (may hold a password: never log it, use redact_url)
    nodes: tuple[tuple[str, int], ...] = ()  # Sentinels or Cluster seeds
    service: str = ""  # the Sentinel service (master name)
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_auth: dict[str, str] = field(default_factory=dict)

    @property
    def sharded(self) -> bool:
        """True for a Cluster: live messages use sharded pub/sub (SPUBLISH / SSUBSCRIBE, Redis >= 7)."""
        return self.kind == "cluster"

    def _auth(self) -> dict[str, Any]:
        return {"username": self.username, "password": self.password}

    def async_client(self, **connection_kwargs: Any) -> aioredis.Redis | aioredis.RedisCluster:
        """A command client for one event loop: pooled, waiting for a free connection under a burst.

        ``connection_kwargs`` are redis-py's (socket timeouts, ``health_check_interval``,
        ``max_connections``; ``timeout`` is how long a caller waits for a pooled connection).
        """
        if self.kind == "server":
            pool = BlockingConnectionPool.from_url(self.url, **connection_kwargs)
            return aioredis.Redis(connection_pool=pool)
        if self.kind == "sentinel":
            return self.sentinel(**connection_kwargs).master_for(
                self.service,
                redis_class=aioredis.Redis,
                connection_pool_class=BlockingSentinelConnectionPool,
                db=self.db,
                **self._auth(),
                **connection_kwargs,
            )
        # redis-py's Cluster pool refuses (rather than waits) past max_connections per node: its
        # default (100) is kept. Retries are quick: callers (the reader, publishers) back off themselves.
        return aioredis.RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self.nodes],
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
            **self._auth(),
            **_without_pool_options(connection_kwargs),
        )

    def channels_redis_hosts(self) -> list[Any]:
        """The ``hosts`` of a channels-redis layer for this target: the URL, or for a Sentinel service
        channels-redis' own host dict. ``ValueError`` for a Cluster, which channels-redis cannot use
        (its multi-key scripts and unsharded pub/sub: channels_redis #420)."""
        if self.kind == "cluster":
            raise ValueError(
                "channels-redis cannot use a Redis Cluster (multi-key scripts, unsharded pub/sub); "
                "use this project's layer (unset CHANNEL_LAYER_BACKEND)"
            )
        if self.kind == "server":
            return [self.url]
        host = {"sentinels": list(self.nodes), "master_name": self.service, "db": self.db, **self._auth()}
        return [{**host, "sentinel_kwargs": self.sentinel_auth or None}]

    def sentinel(self, **connection_kwargs: Any) -> Sentinel:
        """The Sentinel manager (asyncio) for this target's Sentinels."""
        socket_options = {k: v for k, v in connection_kwargs.items() if k.startswith("socket_")}
        return Sentinel(list(self.nodes), sentinel_kwargs={**socket_options, **self.sentinel_auth})

    def subscription_client(self, **connection_kwargs: Any) -> aioredis.Redis:
        """A client for one server's (or the Sentinels' master's) pub/sub connection.

        It retries nothing itself: redis-py would try a dead server again for seconds, while the
        reader's own loop reconnects with its backoff, and resyncs what was missed meanwhile.
        """
        kwargs = _without_pool_options(connection_kwargs)
        if self.kind == "sentinel":
            return self.sentinel(**connection_kwargs).master_for(
                self.service,
                redis_class=aioredis.Redis,
                db=self.db,
                retry=_no_retry(),
                **self._auth(),
                **kwargs,
            )
        return aioredis.Redis.from_url(self.url, retry=_no_retry(), **kwargs)

    def node_client(self, host: str, port: int, **connection_kwargs: Any) -> aioredis.Redis:
        """A client of one Cluster node, for its sharded subscriptions (no retries, as above: the
        reader moves them to another node when this one is gone)."""
        kwargs = _without_pool_options(connection_kwargs)
        return aioredis.Redis(host=host, port=port, retry=_no_retry(), **self._auth(), **kwargs)

    def sync_client(self, seconds: float) -> redis.Redis | redis.RedisCluster:
        """A synchronous client (startup checks, threads that report), giving up after ``seconds``."""
        timeouts: dict[str, Any] = {"socket_connect_timeout": seconds, "socket_timeout": seconds}
        if self.kind == "server":
            return redis.Redis.from_url(self.url, **timeouts)
        if self.kind == "sentinel":
            sentinel = SyncSentinel(list(self.nodes), sentinel_kwargs={**timeouts, **self.sentinel_auth})
            return sentinel.master_for(self.service, db=self.db, **self._auth(), **timeouts)
        nodes = [SyncClusterNode(host, port) for host, port in self.nodes]
        return redis.RedisCluster(startup_nodes=nodes, **self._auth(), **timeouts)

    def sync_ping(self, seconds: float) -> None:
        """PING the deployment synchronously (startup checks); raises redis-py's error if it cannot."""
        client = self.sync_client(seconds)
        try:
            client.ping()
        finally:
            client.close()


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


def _without_pool_options(connection_kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in connection_kwargs.items() if k not in ("timeout", "max_connections")}


def parse_redis_url(url: str) -> RedisTarget:
    """Parse a Redis URL of any of the three kinds; ``ValueError`` (naming the problem) if malformed."""
    scheme = url.partition("://")[0].lower()
    if scheme not in (SENTINEL_SCHEME, CLUSTER_SCHEME):
        return RedisTarget("server", url)
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    nodes = tuple(_host_port(address, url) for address in netloc.split(",") if address)
    if not nodes:
        raise ValueError(f"{scheme}:// needs at least one HOST:PORT")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    path = [segment for segment in parts.path.split("/") if segment]
    if scheme == CLUSTER_SCHEME:
        if path not in ([], ["0"]):
            raise ValueError("redis+cluster:// takes no database (a Redis Cluster has only database 0)")
        return RedisTarget("cluster", url, nodes, username=username, password=password)
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(
            "redis+sentinel:// needs the service name: redis+sentinel://HOST:PORT,.../SERVICE[/DB]"
        )
    query = parse_qs(parts.query)
    sentinel_auth = {
        option: query[f"sentinel_{option}"][-1]
        for option in ("username", "password")
        if query.get(f"sentinel_{option}")
    }
    return RedisTarget(
        "sentinel",
        url,
        nodes,
        service=path[0],
        db=int(path[1]) if len(path) == 2 else 0,
        username=username,
        password=password,
        sentinel_auth=sentinel_auth,
    )


def _host_port(address: str, url: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        scheme = url.partition("://")[0]
        raise ValueError(f"{scheme}:// addresses are HOST:PORT, separated by commas (got {address!r})")
    return host.strip("[]"), int(port)
