"""Shared fixtures: a real Redis, the real ASGI application, and real server processes.

The environment is set before Django starts. Every test session gets its own channel-layer prefix, so
a `make run` on the same Redis can never leak messages into the tests (or the other way round).
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import devenv  # noqa: E402

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
}
os.environ.update(TEST_ENV)

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402

call_command("migrate", verbosity=0)

from tests.redis_process import RedisProcess  # noqa: E402
from tests.redis_topology_fixtures import redis_cluster_fixture, redis_sentinel_fixture  # noqa: E402, F401 - fixtures
from tests.support import Server, start_server  # noqa: E402


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


SERVER_COMMANDS = {
    # What `make run` serves (daphne), and what `make serve`, the Dockerfile and compose run (uvicorn).
    "runserver": [sys.executable, "manage.py", "runserver", "127.0.0.1:0", "--noreload"],
    "production": devenv.production_command("127.0.0.1", "0"),
}


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
def private_redis() -> Iterator[RedisProcess]:
    """A Redis of this test's own that keeps nothing on disk (as compose's Redis), stopped afterwards."""
    redis = RedisProcess()
    redis.start()
    yield redis
    redis.stop()
    shutil.rmtree(redis.dir, ignore_errors=True)
