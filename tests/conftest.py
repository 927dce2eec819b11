"""Shared fixtures: a real Redis, the real ASGI application, and real server processes.

The environment is set before Django starts. Every test session gets its own channel-layer prefix, so
a `make run` on the same Redis can never leak messages into the tests (or the other way round).

Tiers (docs/testing.md): a test that starts a process, a browser or a topology is marked ``system``,
by a ``pytestmark`` of its module or by asking for one of ``SYSTEM_FIXTURES``; ``make test-fast``
runs the rest (``-m "not system"``), ``make test`` everything.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from scripts import devenv
from scripts.redis_server import RedisServer
from scripts.redis_topology import RedisCluster, RedisSentinel
from tests.helpers import postgres
from tests.helpers.processes import ROOT, SERVER_COMMANDS, Server, start_server, timeout
from tests.helpers.skips import require_redis_server

_redis_context = devenv.redis_url()
REDIS_URL = _redis_context.__enter__()

_database_dir = tempfile.mkdtemp(prefix="wsdemo-db-")

TEST_ENV = {
    "DJANGO_SETTINGS_MODULE": "wsproject.settings",
    "DJANGO_SECRET_KEY": "test-secret-key-" + uuid.uuid4().hex,
    "DJANGO_ALLOWED_HOSTS": "localhost,127.0.0.1",
    "DJANGO_DEBUG": "0",
    "REDIS_URL": REDIS_URL,
    "CHANNEL_LAYER_PREFIX": "wsdemo-test-" + uuid.uuid4().hex[:8],
    "PYTHONUNBUFFERED": "1",
    # One SQLite file for the session, migrated below, shared by every server process a test starts.
    "DATABASE_URL": f"sqlite:///{_database_dir}/test.sqlite3",
    # Filled by the static_root fixture (collectstatic) for tests that need static files.
    "DJANGO_STATIC_ROOT": tempfile.mkdtemp(prefix="wsdemo-static-"),
    # tests/testapp (Order, owned by a user): a real model for model changes and per-object access.
    "ECHO_TEST_APP": "1",
}
os.environ.update(TEST_ENV)

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402

call_command("migrate", verbosity=0)

# Asking for any of these puts a test in the system tier: each starts a process (a server, Redis,
# a topology, a database server's database) or needs the static files a server process serves.
SYSTEM_FIXTURES = frozenset(
    {
        "static_root", "server_env", "server", "any_server", "production_server", "server_command",
        "private_redis", "redis_cluster", "redis_sentinel", "postgres_url", "empty_postgres_url",
        "database_url", "database_env", "browser", "page",
    }
)  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``system`` every browser test and every test that asks for a process of its own."""
    for item in items:
        if item.get_closest_marker("browser") or SYSTEM_FIXTURES.intersection(
            getattr(item, "fixturenames", ())
        ):
            item.add_marker(pytest.mark.system)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _redis_context.__exit__(None, None, None)
    shutil.rmtree(_database_dir, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _enough_file_descriptors() -> None:
    """Bursts open a thousand sockets on each side: raise the soft limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


@pytest.fixture(scope="session")
def static_root() -> Path:
    """Collected static files, as the Docker build and `make serve` make them."""
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=ROOT, check=True
    )
    return Path(os.environ["DJANGO_STATIC_ROOT"])


@pytest.fixture
def server_env(static_root: Path) -> dict[str, str]:
    """The environment of a production-like server process (DEBUG off)."""
    return {**os.environ, "DJANGO_STATIC_ROOT": str(static_root)}  # collected before it starts


@pytest.fixture(params=sorted(SERVER_COMMANDS))
def server_command(request: pytest.FixtureRequest) -> list[str]:
    """Each server users run, in turn, for tests that start it with settings of their own."""
    return SERVER_COMMANDS[request.param]


@pytest.fixture
def server(server_env: dict[str, str]) -> Iterator[Server]:
    """`manage.py runserver` (daphne) in its own process on a free port: what `make run` serves."""
    with start_server(SERVER_COMMANDS["runserver"], server_env) as running:
        yield running


@pytest.fixture(params=sorted(SERVER_COMMANDS))
def any_server(request: pytest.FixtureRequest, server_env: dict[str, str]) -> Iterator[Server]:
    """Each server users run, in turn: the development server and the production server."""
    with start_server(SERVER_COMMANDS[request.param], server_env) as running:
        yield running


@pytest.fixture
def production_server(server_env: dict[str, str]) -> Iterator[Server]:
    """The production server (`make serve`) in its own process on a free port."""
    with start_server(SERVER_COMMANDS["production"], server_env) as running:
        yield running


@pytest.fixture
def topic() -> str:
    """A topic of this test's own, so that history from other tests never shows up."""
    return "t-" + uuid.uuid4().hex[:12]


@pytest.fixture
async def layer() -> AsyncIterator[object]:
    """The configured (Redis) channel layer, flushed after the test."""
    from channels.layers import get_channel_layer

    channel_layer = get_channel_layer()
    yield channel_layer
    with contextlib.suppress(Exception):
        await channel_layer.flush()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own that keeps nothing on disk (as compose's Redis), stopped afterwards."""
    redis = RedisServer()
    redis.start()
    yield redis
    redis.remove()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound by us, never listening, for the whole test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def redis_cluster() -> Iterator[RedisCluster]:
    """A ready Redis Cluster of 3 masters with a replica each, on loopback ports, killed after the test.

    The servers are the system's redis-server 7 (``skips.require_redis_server``); about 2 s to start,
    most of it the masters' own 2-second wait before they accept writes."""
    with RedisCluster(binary=require_redis_server(), timeout=timeout(30)) as cluster:
        yield cluster


@pytest.fixture
def redis_sentinel() -> Iterator[RedisSentinel]:
    """A ready master, replica and 3 sentinels (quorum 2) for service ``mymaster``, killed after the test
    (about 1 s to start)."""
    with RedisSentinel(binary=require_redis_server(), timeout=timeout(30)) as sentinel:
        yield sentinel


@pytest.fixture
def empty_postgres_url() -> Iterator[str]:
    """The DATABASE_URL of a new PostgreSQL database with no tables, dropped after the test."""
    postgres.require_postgres()
    with postgres.fresh_database() as url:
        yield url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The DATABASE_URL of a new, migrated PostgreSQL database, dropped after the test."""
    postgres.require_postgres()
    with postgres.fresh_database() as url:
        postgres.migrate(url)
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """The session's SQLite file (migrated above), then a migrated PostgreSQL database of its own."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    url = os.environ["DATABASE_URL"]
    assert url.startswith("sqlite:"), url
    return url


@pytest.fixture
def database_env(server_env: dict[str, str], database_url: str) -> dict[str, str]:
    """The production environment on ``database_url``, for a command and a server alike.

    On PostgreSQL, a Redis namespace of its own too: user ids start again at 1 in a new database, and
    user-1 of the session's database may have history already."""
    if database_url == os.environ["DATABASE_URL"]:
        return server_env
    prefix = "wsdemo-test-pg-" + uuid.uuid4().hex[:8]
    return {**server_env, "DATABASE_URL": database_url, "CHANNEL_LAYER_PREFIX": prefix}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's headless Chromium, driven by Playwright: one per test module (skipped without it,
    failed under CI=true). Not one per session: Playwright's sync API keeps an event loop running in
    the main thread while it is open, and the async tests of later modules could not start theirs."""
    from tests.helpers.browser import CHROMIUM_ARGS, require_chromium, require_frontend

    executable = require_chromium()
    require_frontend()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page with the WebSocket spy installed; console errors are collected on `page.console`."""
    from tests.helpers.browser import WEBSOCKET_SPY, ConsoleWatcher, ms

    context = browser.new_context(viewport={"width": 1000, "height": 1000})
    context.add_init_script(WEBSOCKET_SPY)
    new_page = context.new_page()
    new_page.set_default_timeout(ms(20))
    new_page.console = ConsoleWatcher()
    new_page.console.attach(new_page)
    yield new_page
    context.close()
