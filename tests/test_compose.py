"""docker-compose.yml and the Dockerfile, kept from rotting without a Docker engine.

Each service's command runs here as a local process with the environment the file gives it, with
nothing exported (compose's "as typed"), through the image's ENTRYPOINT with a secrets directory that
the `secrets` service's command made; the only changes are the ones a container network makes
unnecessary: Redis's host becomes the tests' Redis, the database (compose's PostgreSQL) becomes a test
database, and the web server binds 127.0.0.1 on a free port instead of 0.0.0.0:8000. Debian's
`docker-compose config` (no engine needed) validates the file. nginx's config is run by
tests/test_nginx.py; here only its wiring into the file is checked. Images that are not ours (redis,
postgres, nginx) are checked as wiring. The secrets script itself: tests/test_compose_secrets.py.
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

from tests.helpers.clients import data_frames, next_echo
from tests.helpers.processes import ROOT, OutputWatcher, spawn, start_server, stop, timeout
from tests.helpers.skips import skip_or_fail
from wsproject.server import worker_count

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")
# What is exported for compose in these tests: nothing.
NOTHING: dict[str, str] = {}
APP_SERVICES = ("migrate", "web", "pusher")  # the services that run the project's image
SECRETS_MOUNT = "/secrets"  # where the secrets volume is mounted, and the image's entrypoint reads it


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


def local_command(name: str, secrets: Path | None = None) -> list[str]:
    """A service's command as a local process; with ``secrets``, through the image's ENTRYPOINT, which
    reads that directory where a container reads the volume."""
    command = list(COMPOSE["services"][name]["command"])
    command = ["127.0.0.1" if part == "0.0.0.0" else part for part in command]
    if "--port" in command:
        command[command.index("--port") + 1] = "0"
    executable = (
        shutil.which(command[0], path=str(Path(sys.executable).parent)) if command[0] != "python" else None
    )
    command[0] = executable or sys.executable
    return command if secrets is None else [*local_entrypoint(secrets), *command]


def local_entrypoint(secrets: Path) -> list[str]:
    """The image's ENTRYPOINT as a local command, reading ``secrets`` where a container reads the volume."""
    entry = [str(secrets) if part == SECRETS_MOUNT else part for part in image_entrypoint()]
    return [sys.executable, *entry[1:]]


def image_entrypoint() -> list[str]:
    line = next(line for line in dockerfile_instructions() if line.startswith("ENTRYPOINT "))
    return list(json.loads(line.removeprefix("ENTRYPOINT ")))


@pytest.fixture
def secrets_volume(tmp_path: Path) -> Path:
    """What compose's one-shot `secrets` service leaves in its volume, with nothing exported."""
    volume = tmp_path / "secrets-volume"
    command = [part if part != SECRETS_MOUNT else str(volume) for part in local_command("secrets")]
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SECRET_KEY", "POSTGRES_PASSWORD")}
    env.update(declared_env("secrets", NOTHING))
    result = subprocess.run(  # noqa: PLW1510 - asserted below, with the output
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout(30)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return volume


def test_services_and_their_safety_properties() -> None:
    services = COMPOSE["services"]
    assert set(services) >= {"nginx", "redis", "postgres", "migrate", "web", "pusher", "secrets"}
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


def test_nothing_needs_exporting() -> None:
    for service in COMPOSE["services"].values():
        for value in service.get("environment", {}).values():
            interpolate(str(value), NOTHING)  # a ${VAR:?...} would raise: required
        for port in service.get("ports", []):
            interpolate(str(port), NOTHING)
    # Every variable the file names has a default: none is required, none is left bare.
    for name, kind, _ in VARIABLE.findall((ROOT / "docker-compose.yml").read_text()):
        assert kind == "-", f"${{{name}}} needs a default (${{{name}:-...}}): nothing is exported"


def docker_compose() -> str:
    """Debian's docker-compose (apt-get install docker-compose); skip without it, fail under CI=true."""
    found = shutil.which("docker-compose")
    if found:
        return found
    reason = "no docker-compose: apt-get install -y docker-compose (validates the file, no engine needed)"
    skip_or_fail(reason)


def test_docker_compose_config_accepts_the_file_with_nothing_exported(tmp_path: Path) -> None:
    """`docker-compose config` validates and interpolates the file as `up` would, in a directory with
    no .env and an environment with none of the stack's variables."""
    executable = docker_compose()
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    ours = ("DJANGO_", "POSTGRES_", "DATABASE_URL", "REDIS_URL", "PORT", "WEB_CONCURRENCY", "COMPOSE_")
    env = {key: value for key, value in os.environ.items() if not key.startswith(ours)}
    result = subprocess.run(  # noqa: PLW1510 - asserted below, with the output
        [executable, "config"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout(60)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert (
        services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == f"{SECRETS_MOUNT}/postgres_password"
    )
    assert "POSTGRES_PASSWORD" not in services["postgres"]["environment"]
    for name in APP_SERVICES:
        environment = services[name]["environment"]
        assert environment["DJANGO_SECRET_KEY"] == "", name  # the entrypoint reads the volume's
        assert dj_database_url.parse(environment["DATABASE_URL"])["PASSWORD"] in ("", None), name
    assert set(config["volumes"]) == {"postgres-data", "secrets"}
    assert "8000" in json.dumps(services["nginx"]["ports"])


def test_every_container_reads_the_secrets_the_one_shot_makes() -> None:
    services = COMPOSE["services"]
    maker = services["secrets"]
    assert maker["build"] == services["web"]["build"], "made by the image's own Python"
    assert maker["command"] == ["python", "deploy/compose_secrets.py", "init", SECRETS_MOUNT]
    assert maker.get("restart", "no") == "no", "a one-shot: restarted, it would never count as completed"
    assert maker["volumes"] == [f"secrets:{SECRETS_MOUNT}"]
    # A value exported or in .env reaches it, and so replaces the volume's (tests/test_compose_secrets.py).
    assert maker["environment"] == {
        "DJANGO_SECRET_KEY": "${DJANGO_SECRET_KEY:-}",
        "POSTGRES_PASSWORD": "${POSTGRES_PASSWORD:-}",
    }
    for name in (*APP_SERVICES, "postgres"):
        service = services[name]
        assert f"secrets:{SECRETS_MOUNT}:ro" in service["volumes"], name
        assert service["depends_on"]["secrets"]["condition"] == "service_completed_successfully", name
    # The image's entrypoint reads the same directory; the password file is postgres's.
    assert image_entrypoint() == ["python", "deploy/compose_secrets.py", "exec", SECRETS_MOUNT, "--"]
    password_file = services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"]
    assert password_file == f"{SECRETS_MOUNT}/postgres_password"
    # `down` keeps both volumes, `down -v` deletes both: a new password always meets a new database.
    assert {"secrets", "postgres-data"} <= set(COMPOSE["volumes"])


def test_the_image_holds_the_script_and_no_secret() -> None:
    instructions = dockerfile_instructions()
    assert "COPY deploy/compose_secrets.py ./deploy/" in instructions
    assert any(
        line.startswith("RUN ") and "/secrets" in line and "chown app" in line for line in instructions
    )
    # The build's throwaway key for collectstatic is the only DJANGO_SECRET_KEY the image ever sees.
    assert not [line for line in instructions if line.startswith("ENV ") and "SECRET" in line]


def test_postgres_keeps_its_data_in_a_named_volume_and_the_app_uses_it() -> None:
    postgres = COMPOSE["services"]["postgres"]
    assert re.fullmatch(r"postgres:1[67]-alpine", postgres["image"])
    volume, target = postgres["volumes"][0].split(":")
    assert target == "/var/lib/postgresql/data", "the postgres:16/17 images keep their data there"
    assert volume in COMPOSE["volumes"], "a named volume, so the data outlives the container"
    assert "pg_isready" in postgres["healthcheck"]["test"]
    # No password in the file, published port or not: it comes from the secrets volume.
    server = declared_env("postgres", NOTHING)
    assert "POSTGRES_PASSWORD" not in server


def test_the_apps_database_url_gets_the_password_postgres_was_given(secrets_volume: Path) -> None:
    """The app's DATABASE_URL, as the entrypoint completes it, names the user, password and database
    the postgres image creates from its environment and POSTGRES_PASSWORD_FILE."""
    server = declared_env("postgres", NOTHING)
    password_file = secrets_volume / Path(server["POSTGRES_PASSWORD_FILE"]).relative_to(SECRETS_MOUNT)
    show = "import os; print(os.environ['DATABASE_URL'])"
    env = {**os.environ, **declared_env("web", NOTHING)}
    result = subprocess.run(  # noqa: PLW1510 - asserted below, with the output
        [*local_entrypoint(secrets_volume), sys.executable, "-c", show],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout(30),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    database = dj_database_url.parse(result.stdout.strip())
    assert database["ENGINE"] == "django.db.backends.postgresql"
    assert (database["HOST"], database["PORT"]) == ("postgres", 5432)
    assert database["USER"] == server["POSTGRES_USER"]
    assert database["PASSWORD"] == password_file.read_text()
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


def test_the_migrate_command_creates_the_tables(new_database_url: str, secrets_volume: Path) -> None:
    env = service_env("migrate", NOTHING, database_url=new_database_url)
    assert not table_names(new_database_url)
    outputs = []
    command = local_command("migrate", secrets_volume)
    for attempt in ("the first up", "every up after it"):
        result = subprocess.run(  # noqa: PLW1510 - asserted below, with the output
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout(60)
        )
        assert result.returncode == 0, f"{attempt}: {result.stdout}{result.stderr}"
        outputs.append(result.stdout)
    assert "Applying auth.0001_initial... OK" in outputs[0], outputs[0]
    assert "No migrations to apply." in outputs[1], outputs[1]
    tables = table_names(new_database_url)
    assert {"django_migrations", "auth_user", "django_session", "echo_apikey"} <= tables, tables


async def test_web_and_pusher_commands_serve_and_push_with_the_files_environment(
    static_root: Path, secrets_volume: Path
) -> None:
    env = NOTHING
    web_env = {**service_env("web", env), "DJANGO_STATIC_ROOT": str(static_root)}
    assert web_env["DJANGO_SECRET_KEY"] == ""  # the entrypoint's, from the volume
    # One worker per available CPU, capped, unless WEB_CONCURRENCY is set (wsproject/server.py).
    assert web_env["WEB_CONCURRENCY"] == "auto"
    workers = worker_count(web_env["WEB_CONCURRENCY"])
    with start_server(local_command("web", secrets_volume), web_env) as web:
        # With several workers uvicorn's supervisor binds the socket; the workers listen once they are up.
        web.output.wait_for_count(r"Started server process \[\d+\]", workers, 30)
        async with websockets.connect(web.ws_url(), origin=web.origin) as ws:
            await ws.send("*")
            assert await next_echo(ws) == "*"
            pusher = spawn(local_command("pusher", secrets_volume), service_env("pusher", env))
            output = OutputWatcher(pusher)
            try:
                frame = {"type": None}
                while frame["type"] != "data":  # history and presence may come first
                    frame = data_frames(await asyncio.wait_for(ws.recv(), timeout(15)))[-1]
            finally:
                await asyncio.to_thread(stop, pusher)
            assert frame["type"] == "data" and frame["topic"] == "prices", output.drain()
        assert "Traceback" not in web.output.text()
