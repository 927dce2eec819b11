"""/metrics through prometheus_client: the exposition, one scrape over several workers, and nginx keeping
it private. Real server processes; every value asserted is one this test caused on a fresh server."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import signal
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import websockets

from echo.ops.metrics import COUNTERS
from scripts import devenv
from tests.helpers.clients import next_echo
from tests.helpers.nginx import require_nginx, start_nginx
from tests.helpers.processes import Server, http_get, start_server, timeout

WORKERS_COMMAND = [*devenv.production_command("127.0.0.1", "0"), "--workers", "2"]
# Logged by each worker once it has loaded the app (the socket is the supervisor's, bound already).
WORKER_READY = r"Started server process \[(\d+)\]"


def scrape(server: Server, kept: http.client.HTTPConnection | None = None) -> dict[str, float]:
    """One scrape of /metrics: every series (name and labels as written) and its value.

    Over ``kept``, a kept-alive connection, every scrape is answered by the same worker.
    """
    if kept is None:
        status, text = http_get(server.http_url("/metrics"))
    else:
        kept.request("GET", "/metrics")
        response = kept.getresponse()
        status, text = response.status, response.read().decode()
    assert status == 200, text
    series = (line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {name: float(value) for name, value in series}


async def scrape_until(
    server: Server, wanted: dict[str, float], kept: http.client.HTTPConnection | None = None
) -> dict[str, float]:
    """Scrape until one scrape shows every ``wanted`` value (other workers' are up to a second old)."""
    seen: dict[str, float] = {}
    try:
        async with asyncio.timeout(timeout(10)):
            while True:
                seen = await asyncio.to_thread(scrape, server, kept)
                if all(seen.get(name) == value for name, value in wanted.items()):
                    return seen
    except TimeoutError:
        shown = {name: seen.get(name) for name in wanted}
        raise AssertionError(f"/metrics never showed {wanted}; last scrape: {shown}") from None


async def connect_echoing(
    server: Server, count: int, stack: contextlib.AsyncExitStack
) -> list[websockets.ClientConnection]:
    """``count`` connections, one after another, each having had a frame echoed (so the server has
    counted it), closed with ``stack``."""
    url = server.ws_url("/ws/echo/?history=0")
    clients = []
    for _ in range(count):
        ws = await stack.enter_async_context(websockets.connect(url, origin=server.origin))
        await ws.send("counted?")
        assert await next_echo(ws) == "counted?"
        clients.append(ws)
    return clients


@contextlib.asynccontextmanager
async def echoing_clients(server: Server, count: int) -> AsyncIterator[list[websockets.ClientConnection]]:
    async with contextlib.AsyncExitStack() as stack:
        yield await connect_echoing(server, count, stack)


@contextlib.asynccontextmanager
async def clients_of_both_workers(server: Server) -> AsyncIterator[list[websockets.ClientConnection]]:
    """Connections, ten at a time, until both workers hold some.

    Which worker accepts a connection is the kernel's choice, and it can give a burst to one of them.
    A /healthz answer is one worker's own count: some but not all of the clients means both have some.
    """
    async with contextlib.AsyncExitStack() as stack:
        clients: list[websockets.ClientConnection] = []
        while len(clients) < 200:
            clients += await connect_echoing(server, 10, stack)
            _, body = await asyncio.to_thread(http_get, server.http_url("/healthz"))
            if 0 < json.loads(body)["connections"] < len(clients):
                break
        else:
            raise AssertionError(f"all {len(clients)} clients went to the same worker")
        yield clients


@pytest.fixture
def two_workers(server_env: dict[str, str]) -> Iterator[Server]:
    """The production server with two worker processes, both accepting."""
    env = {key: value for key, value in server_env.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    with start_server(WORKERS_COMMAND, env) as server:
        server.output.wait_for_count(WORKER_READY, 2, 30)
        yield server


async def test_metrics_lists_every_counter_at_zero_then_counts_what_this_test_did(
    production_server: Server,
) -> None:
    with urllib.request.urlopen(production_server.http_url("/metrics"), timeout=timeout(10)) as response:
        content_type = response.headers["content-type"]
        text = response.read().decode()
    assert content_type.startswith("text/plain; version=0.0.4")
    for name in COUNTERS:
        assert f"# TYPE {name} counter\n{name} 0.0\n" in text, name
    assert "_created" not in text  # no creation-time series: counters are counts, nothing else
    assert "\nws_connections_open 0.0\n" in text and "\nlayer_redis_disconnects 0.0\n" in text

    async with echoing_clients(production_server, 3):
        seen = await asyncio.to_thread(scrape, production_server)
        assert seen["ws_connections_total"] == 3 and seen["ws_connections_open"] == 3
        assert seen['ws_frames_in_total{kind="text"}'] == 3
    await scrape_until(production_server, {"ws_connections_open": 0, "ws_connections_total": 3})


async def test_one_scrape_of_either_worker_sums_both(two_workers: Server) -> None:
    server = two_workers
    directory = Path(server.output.wait_for(r"shared through (\S+) \(PROMETHEUS_MULTIPROC_DIR\)").group(1))
    assert directory.is_dir()
    async with clients_of_both_workers(server) as clients:
        everything = {
            "ws_connections_total": len(clients),
            "ws_connections_open": len(clients),
            'ws_frames_in_total{kind="text"}': len(clients),
        }
        # Asked of one worker only, the sum needs the other to push its counts by itself.
        kept = http.client.HTTPConnection(server.host, server.port, timeout=timeout(10))
        await scrape_until(server, everything, kept)
        kept.close()
        # Whichever worker answers, the sum is the same.
        for _ in range(10):
            seen = await asyncio.to_thread(scrape, server)
            assert {name: seen[name] for name in everything} == everything
        assert not [name for name in seen if "_created" in name]
    await scrape_until(server, {"ws_connections_open": 0, "ws_connections_total": len(clients)})
    server.process.send_signal(signal.SIGINT)
    await asyncio.to_thread(server.process.wait, timeout(15))
    assert not directory.exists(), "the supervisor left its metrics directory behind"


async def test_a_killed_worker_stops_counting_as_open_and_its_counts_stay(two_workers: Server) -> None:
    server = two_workers
    pids = [int(match.group(1)) for line in server.output.lines if (match := re.search(WORKER_READY, line))]
    async with clients_of_both_workers(server) as clients:
        await scrape_until(server, {"ws_connections_open": len(clients)})
        os.kill(pids[0], signal.SIGKILL)  # no goodbye: its files stay as they were
        alive = 0
        for ws in clients:  # a client of the killed worker finds its connection gone
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.send("still there?")
                await next_echo(ws)
                alive += 1
        assert 0 < alive < len(clients)
        await scrape_until(server, {"ws_connections_open": alive, "ws_connections_total": len(clients)})


async def test_workers_start_from_zero_in_the_operators_directory(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**server_env, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _ in range(2):  # the second run must not add the first run's counts
        with start_server(WORKERS_COMMAND, env) as server:
            server.output.wait_for_count(WORKER_READY, 2, 30)
            # What a worker killed as it created its file leaves (empty): a scrape must not fail on it.
            (tmp_path / "counter_999999999.db").touch()
            await scrape_until(server, {"ws_connections_total": 0})
            async with echoing_clients(server, 3):
                await scrape_until(server, {"ws_connections_total": 3})
        assert list(tmp_path.glob("*.db")), "the workers wrote no files to the operator's directory"


async def test_nginx_refuses_metrics_and_passes_healthz(production_server: Server, tmp_path: Path) -> None:
    binary = require_nginx()
    with start_nginx(binary, [production_server.port], tmp_path) as nginx:
        status, _ = await asyncio.to_thread(http_get, nginx.http_url("/metrics"))
        assert status == 403
        status, body = await asyncio.to_thread(http_get, nginx.http_url("/healthz"))
        assert (status, json.loads(body)["status"]) == (200, "ok")
    status, body = await asyncio.to_thread(http_get, production_server.http_url("/metrics"))
    assert status == 200 and "\nws_connections_total " in body
