"""docker-compose.yml and the Dockerfile, kept from rotting without a Docker engine.

Each service's command runs here as a local process with the environment the file gives it; the only
changes are the ones a container network makes unnecessary: Redis's host becomes the tests' Redis,
and the web server binds 127.0.0.1 on a free port instead of 0.0.0.0:8000. nginx's config is run by
tests/test_nginx.py; here only its wiring into the file is checked.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import websockets
import yaml

from tests.support import ROOT, OutputWatcher, data_frames, next_echo, spawn, start_server, stop, timeout

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


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


def service_env(name: str, env: dict[str, str]) -> dict[str, str]:
    declared = COMPOSE["services"][name]["environment"]
    resolved = {key: interpolate(str(value), env) for key, value in declared.items()}
    resolved["REDIS_URL"] = resolved["REDIS_URL"].replace("redis://redis:6379/0", os.environ["REDIS_URL"])
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
    assert set(services) >= {"nginx", "redis", "web", "pusher"}
    assert "ports" not in services["redis"], "Redis must not be published to the host"
    for name in ("nginx", "redis", "web"):
        assert services[name]["healthcheck"]["test"]
    for name in ("web", "pusher"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert services[name]["environment"]["REDIS_URL"] == "redis://redis:6379/0"


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


def test_the_secret_key_must_come_from_the_environment() -> None:
    with pytest.raises(LookupError, match="DJANGO_SECRET_KEY"):
        service_env("web", {})


def test_the_dockerfile_builds_a_slim_non_root_image_without_migrations() -> None:
    assert re.search(r"^FROM python:3\.\d+-slim", DOCKERFILE, re.M)
    user = re.findall(r"^USER (\S+)", DOCKERFILE, re.M)
    assert user and user[-1] not in {"root", "0"}
    assert "migrate" not in DOCKERFILE
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", DOCKERFILE, re.M).group(1))
    assert cmd == COMPOSE["services"]["web"]["command"]


async def test_web_and_pusher_commands_serve_and_push_with_the_files_environment(static_root: Path) -> None:
    env = {"DJANGO_SECRET_KEY": "compose-test-secret"}
    web_env = {**service_env("web", env), "DJANGO_STATIC_ROOT": str(static_root)}
    with start_server(local_command("web"), web_env) as web:
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
