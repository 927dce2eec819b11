"""docker-compose.yml and the Dockerfile, kept from rotting without a Docker engine.

Each service's command runs here as a local process with the environment the file gives it; the only
changes are the ones a container network makes unnecessary: Redis's host becomes the tests' Redis,
the database (compose's PostgreSQL) becomes a test database, and the web server binds 127.0.0.1 on a
free port instead of 0.0.0.0:8000. nginx's config is run by tests/test_nginx.py; here only its wiring
into the file is checked. Images that are not ours (redis, postgres, nginx) are checked as wiring.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import dj_database_url
import psycopg
import pytest
import websockets
import yaml

from tests.postgres import empty_postgres_url  # noqa: F401 - a fixture
from tests.support import ROOT, OutputWatcher, data_frames, next_echo, spawn, start_server, stop, timeout
from wsproject.server import worker_count

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")
# What compose needs from the environment (or its .env file): the tests' stand-ins.
REQUIRED = {"DJANGO_SECRET_KEY": "compose-test-secret", "POSTGRES_PASSWORD": "compose-test-password"}
APP_SERVICES = ("migrate", "web", "pusher")  # the services that run the project's image


def interpolate(value: str, env: dict[str, str]) -> str:
    """Expand ${VAR}, ${VAR:-default} and ${VAR:?error} as docker compose does."""

    def expand(match: re.Match[str]) -> str:
        name, kind, arg = match.groups()
        if env.get(name):
            return env[name]
        if kind == "?":
            raise LookupError(f"{name}: {arg}")
        return arg if kind == "-" else ""

    return VARIABLE.sub(expand, value)


def declared_env(name: str, env: dict[str, str]) -> dict[str, str]:
    """A service's environment as compose would give it, from ``env`` (the shell's, or .env's)."""
    declared = COMPOSE["services"][name]["environment"]
    return {key: interpolate(str(value), env) for key, value in declared.items()}


def service_env(name: str, env: dict[str, str], database_url: str | None = None) -> dict[str, str]:
    """A service's environment here: the tests' Redis, and ``database_url`` or the tests' database."""
    resolved = declared_env(name, env)
    resolved["REDIS_URL"] = resolved["REDIS_URL"].replace("redis://redis:6379/0", os.environ["REDIS_URL"])
    resolved["DATABASE_URL"] = database_url or os.environ["DATABASE_URL"]
    return {**os.environ, **resolved}


def local_command(name: str) -> list[str]:
    command = list(COMPOSE["services"][name]["command"])
    command = ["127.0.0.1" if part == "0.0.0.0" else part for part in command]
    if "--port" in command:
        command[command.index("--port") + 1] = "0"
    executable = (
        shutil.which(command[0], path=str(Path(sys.executable).parent)) if command[0] != "python" else None
    )
    command[0] = executable or sys.executable
    return command


def test_services_and_their_safety_properties() -> None:
    services = COMPOSE["services"]
    assert set(services) >= {"nginx", "redis", "postgres", "migrate", "web", "pusher"}
    assert "ports" not in services["redis"], "Redis must not be published to the host"
    assert "ports" not in services["postgres"], "PostgreSQL must not be published to the host"
    for name in ("nginx", "redis", "postgres", "web"):
        assert services[name]["healthcheck"]["test"]
    for name in ("web", "pusher"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert services[name]["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    for name in APP_SERVICES:
        assert services[name]["build"] == services["web"]["build"], f"{name} must run the project's image"
        # One database for every container of the image, so a `docker compose run` of any reaches it.
        assert services[name]["environment"]["DATABASE_URL"] == services["web"]["environment"]["DATABASE_URL"]


def test_only_nginx_is_published_so_web_scales() -> None:
    services = COMPOSE["services"]
    # `docker compose up --scale web=3` fails on a fixed host port, and a published replica would
    # let clients around nginx, spoofing X-Forwarded-For (web trusts every peer: FORWARDED_ALLOW_IPS).
    assert "ports" not in services["web"], "web must not publish a host port (nginx is the way in)"
    assert services["web"]["environment"]["FORWARDED_ALLOW_IPS"] == "*"
    assert "8000" in [str(port) for port in services["web"].get("expose", [])]
    assert services["nginx"]["ports"] == ["${PORT:-8000}:80"]
    assert services["nginx"]["depends_on"]["web"]["condition"] == "service_healthy"
    assert interpolate(services["nginx"]["ports"][0], {}) == "8000:80"


def test_nginx_mounts_the_repos_config_read_only_where_it_includes_it() -> None:
    mounts = [volume.split(":") for volume in COMPOSE["services"]["nginx"]["volumes"]]
    assert all(mode == "ro" for _, _, mode in mounts)
    targets = {target: ROOT / source for source, target, _ in mounts}
    assert targets["/etc/nginx/nginx.conf"] == ROOT / "deploy/nginx/nginx.conf"
    main_conf = targets["/etc/nginx/nginx.conf"].read_text()
    # Relative includes resolve against the main file's directory.
    for include in re.findall(r"^\s*include\s+([^;]+);", main_conf, re.M):
        assert f"/etc/nginx/{include}" in targets, f"nginx.conf includes {include}, which is not mounted"
    for source in targets.values():
        assert source.is_file(), source
    upstream = targets["/etc/nginx/web-upstream.conf"].read_text()
    assert re.search(r"^\s*server web:8000\b", upstream, re.M), "nginx must reach web on its port"


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_the_secrets_must_come_from_the_environment(missing: str) -> None:
    with pytest.raises(LookupError, match=missing):
        declared_env("web", {key: value for key, value in REQUIRED.items() if key != missing})
    declared_env("web", REQUIRED)  # and nothing else is required


def test_postgres_keeps_its_data_in_a_named_volume_and_the_app_uses_it() -> None:
    postgres = COMPOSE["services"]["postgres"]
    assert re.fullmatch(r"postgres:1[67]-alpine", postgres["image"])
    volume, target = postgres["volumes"][0].split(":")
    assert target == "/var/lib/postgresql/data", "the postgres:16/17 images keep their data there"
    assert volume in COMPOSE["volumes"], "a named volume, so the data outlives the container"
    assert "pg_isready" in postgres["healthcheck"]["test"]
    with pytest.raises(LookupError, match="POSTGRES_PASSWORD"):
        declared_env("postgres", {})  # no default password, published port or not
    # The app's DATABASE_URL names the user, password and database the postgres image creates.
    server = declared_env("postgres", REQUIRED)
    database = dj_database_url.parse(declared_env("web", REQUIRED)["DATABASE_URL"])
    assert database["ENGINE"] == "django.db.backends.postgresql"
    assert (database["HOST"], database["PORT"]) == ("postgres", 5432)
    assert database["USER"] == server["POSTGRES_USER"]
    assert database["PASSWORD"] == server["POSTGRES_PASSWORD"] == REQUIRED["POSTGRES_PASSWORD"]
    assert database["NAME"] == server["POSTGRES_DB"]


def test_migrations_run_once_before_any_web_replica_starts() -> None:
    services = COMPOSE["services"]
    assert services["migrate"]["command"] == ["python", "manage.py", "migrate", "--noinput"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # A one-shot: restarted, it would never count as completed, and web would never start.
    assert services["migrate"].get("restart", "no") == "no"
    assert services["web"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["web"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # Only the one-shot migrates: N web replicas (or their workers) must never race to.
    for name in set(APP_SERVICES) - {"migrate"}:
        assert "migrate" not in services[name]["command"], name


def dockerfile_instructions() -> list[str]:
    """The Dockerfile's instructions, each whole (with its continuation lines), without comments."""
    lines = [line for line in DOCKERFILE.splitlines() if not line.lstrip().startswith("#")]
    return [part.strip() for part in re.split(r"(?<!\\)\n", "\n".join(lines)) if part.strip()]


def test_the_dockerfile_builds_a_slim_non_root_image_without_migrations() -> None:
    instructions = dockerfile_instructions()
    assert any(re.match(r"FROM python:3\.\d+-slim", line) for line in instructions)
    user = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert user and user[-1] not in {"root", "0"}
    assert any("collectstatic" in line for line in instructions if line.startswith("RUN "))
    assert not [line for line in instructions if "migrate" in line], "never migrate in an image build"
    cmd = json.loads(next(line for line in instructions if line.startswith("CMD ")).removeprefix("CMD "))
    assert cmd == COMPOSE["services"]["web"]["command"]


def table_names(database_url: str) -> set[str]:
    """The tables in a database, read without Django."""
    database = dj_database_url.parse(database_url)
    if database["ENGINE"] == "django.db.backends.sqlite3":
        with contextlib.closing(sqlite3.connect(database["NAME"])) as conn:
            return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    with psycopg.connect(database_url) as conn:
        query = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        return {name for (name,) in conn.execute(query)}


@pytest.fixture(params=["sqlite", "postgresql"])
def new_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database with no tables yet: an SQLite file that does not exist yet, then an empty PostgreSQL one."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("empty_postgres_url"))
    return f"sqlite:///{tmp_path / 'compose.sqlite3'}"


def test_the_migrate_command_creates_the_tables(new_database_url: str) -> None:
    env = service_env("migrate", REQUIRED, database_url=new_database_url)
    assert not table_names(new_database_url)
    outputs = []
    for attempt in ("the first up", "every up after it"):
        result = subprocess.run(  # noqa: PLW1510 - asserted below, with the output
            local_command("migrate"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout(60)
        )
        assert result.returncode == 0, f"{attempt}: {result.stdout}{result.stderr}"
        outputs.append(result.stdout)
    assert "Applying auth.0001_initial... OK" in outputs[0], outputs[0]
    assert "No migrations to apply." in outputs[1], outputs[1]
    tables = table_names(new_database_url)
    assert {"django_migrations", "auth_user", "django_session", "echo_apikey"} <= tables, tables


async def test_web_and_pusher_commands_serve_and_push_with_the_files_environment(static_root: Path) -> None:
    env = REQUIRED
    web_env = {**service_env("web", env), "DJANGO_STATIC_ROOT": str(static_root)}
    # One worker per available CPU, capped, unless WEB_CONCURRENCY is set (wsproject/server.py).
    assert web_env["WEB_CONCURRENCY"] == "auto"
    workers = worker_count(web_env["WEB_CONCURRENCY"])
    with start_server(local_command("web"), web_env) as web:
        # With several workers uvicorn's supervisor binds the socket; the workers listen once they are up.
        web.output.wait_for_count(r"Started server process \[\d+\]", workers, 30)
        async with websockets.connect(web.ws_url(), origin=web.origin) as ws:
            await ws.send("*")
            assert await next_echo(ws) == "*"
            pusher = spawn(local_command("pusher"), service_env("pusher", env))
            output = OutputWatcher(pusher)
            try:
                frame = {"type": None}
                while frame["type"] != "data":  # history and presence may come first
                    frame = data_frames(await asyncio.wait_for(ws.recv(), timeout(15)))[-1]
            finally:
                await asyncio.to_thread(stop, pusher)
            assert frame["type"] == "data" and frame["topic"] == "prices", output.drain()
        assert "Traceback" not in web.output.text()
