"""What the command-line entry points share: development settings from a file, one-line config errors.

``manage.py`` reads ``.env.dev`` in the checkout (``make run`` and ``make test`` write it: ``DJANGO_DEBUG=1``
and a generated ``DJANGO_SECRET_KEY``), so that ``manage.py runserver``, ``push_data`` or ``shell`` work
as typed; a variable exported in the environment always wins over the file. Nothing else reads the file:
not ``settings.py``, not the production server (``python -m wsproject.server``: its ``main()`` may call
``load_settings``, which reads no file), not ``asgi.py`` under any ASGI server, and the Docker image
never contains it.
It is not named ``.env`` because docker compose reads that one, for production's variables.

A configuration mistake stops a command with one line on stderr, saying what to set, and exit status 2.
Django is imported only inside functions, so that a Python without it still gets that one line.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

BASE_DIR = Path(__file__).resolve().parent.parent
DEFAULT_ENV_FILE = BASE_DIR / ".env.dev"
# Names another file to read instead of .env.dev; set to an empty value, no file is read.
ENV_FILE_VARIABLE = "DJANGO_ENV_FILE"
CONFIG_ERROR_STATUS = 2

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class EnvFileError(ValueError):
    """A line of an env file that is not ``KEY=VALUE``."""


def fail(program: str, message: str) -> NoReturn:
    """Print ``program: message`` as one line on stderr and exit with CONFIG_ERROR_STATUS."""
    print(f"{program}: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(CONFIG_ERROR_STATUS)


def parse_env_file(text: str, name: str) -> dict[str, str]:
    """Parse ``KEY=VALUE`` lines: blank lines and ``#`` comments skipped, an ``export`` prefix allowed.

    A value may be wrapped in matching single or double quotes, which are removed. Nothing is expanded
    and there are no inline comments (a ``#`` inside a value is part of it). Raises EnvFileError,
    naming the line but never echoing it (it may hold a secret).
    """
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _KEY.fullmatch(key):
            raise EnvFileError(f"{name} line {number}: expected KEY=VALUE")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def create_dev_env_file(path: Path = DEFAULT_ENV_FILE) -> bool:
    """Write development settings (DEBUG on, a new random secret) to ``path`` unless it exists.

    Called by ``make run`` and ``make test`` (``python -m scripts.devenv``). Returns True if it wrote
    the file. Never overwrites: an edited file, or one another process just wrote, is kept. Readable by its
    owner only, since it holds a secret.
    """
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(
            "# Development settings for manage.py in this checkout, written once by `make run` or\n"
            "# `make test`. Variables exported in the environment win over these. The production server\n"
            "# (python -m wsproject.server, make serve), the Docker image and compose never read this file.\n"
            "# Delete it to have a new secret written. docs/operations.md: Configuration.\n"
            "DJANGO_DEBUG=1\n"
            f"DJANGO_SECRET_KEY={secrets.token_urlsafe(50)}\n"
        )
    return True


def env_file_path(environ: Mapping[str, str]) -> Path | None:
    """The env file to read: DJANGO_ENV_FILE if set (None if set empty), else .env.dev in the checkout."""
    chosen = environ.get(ENV_FILE_VARIABLE)
    if chosen is None:
        return DEFAULT_ENV_FILE
    return Path(chosen) if chosen.strip() else None


def load_env_file(program: str) -> Path | None:
    """Called by manage.py first: copy the env file's variables into os.environ, those exported winning.

    Returns the file read, or None (no .env.dev yet, or DJANGO_ENV_FILE set empty). A file named by
    DJANGO_ENV_FILE that cannot be read, or a malformed line, stops the command with one line.
    """
    path = env_file_path(os.environ)
    if path is None or (path == DEFAULT_ENV_FILE and not path.exists()):
        return None
    try:
        values = parse_env_file(path.read_text(encoding="utf-8"), str(path))
    except OSError as error:
        named = f"{ENV_FILE_VARIABLE}={path}" if ENV_FILE_VARIABLE in os.environ else str(path)
        fail(program, f"{named}: cannot read it ({error.strerror or error})")
    except (EnvFileError, UnicodeDecodeError) as error:
        fail(program, str(error))
    for key, value in values.items():
        os.environ.setdefault(key, value)
    return path


@contextlib.contextmanager
def configuration_errors(program: str, traceback: bool = False) -> Iterator[None]:
    """Turn Django's ImproperlyConfigured into one line and exit status 2 (unless ``traceback``)."""
    from django.core.exceptions import ImproperlyConfigured

    try:
        yield
    except ImproperlyConfigured as error:
        if traceback:
            raise
        fail(program, str(error))


def load_settings(program: str) -> None:
    """Load Django's settings now, so that a mistake in them stops ``program`` with one line.

    Called before anything else imports them: by manage.py, and by the production server's main().
    Reads no env file.
    """
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wsproject.settings")
    from django.conf import settings

    with configuration_errors(program):
        settings.INSTALLED_APPS  # noqa: B018 - the first access imports and checks the settings module


def redis_url_to_check() -> str | None:
    """The Redis URL of the default channel layer, if it is configured with one."""
    from django.conf import settings

    hosts = settings.CHANNEL_LAYERS.get("default", {}).get("CONFIG", {}).get("hosts")
    return hosts[0] if hosts and isinstance(hosts[0], str) else None


def redis_problem(url: str, seconds: float = 1.0) -> str | None:
    """None if Redis (one server, the Sentinels' master, or a Cluster) answers PING at ``url`` within
    ``seconds``, else what went wrong."""
    import redis

    from echo.layer.redis_target import parse_redis_url

    try:
        parse_redis_url(url).sync_ping(seconds)
    except (redis.RedisError, OSError, ValueError) as error:
        return str(error) or type(error).__name__
    return None


def warn_without_redis(program: str) -> None:
    """Called before runserver starts: one line on how to get a Redis if none answers (it starts anyway).

    The server comes up either way (pages load, echo works) and the channel layer keeps retrying, so
    live data flows as soon as a Redis answers; this only says so at once instead of in later logs.
    """
    url = redis_url_to_check()
    if url is None:
        return
    problem = redis_problem(url)
    if problem is None:
        return
    from echo.layer.redis_link import redact_url

    where = f"REDIS_URL={redact_url(url)}" if os.environ.get("REDIS_URL") else redact_url(url)
    print(
        f"{program}: no Redis answers at {where} ({problem}); the server starts, but live data waits "
        "for one: start redis-server, set REDIS_URL, or use `make run`, which starts an embedded Redis",
        file=sys.stderr,
    )


def manage(argv: Sequence[str]) -> None:
    """Run a manage.py command with development settings from the env file and one-line config errors.

    ``--traceback`` (Django's own option) keeps the traceback of an ImproperlyConfigured raised while a
    command runs; mistakes in the env file or the settings are always one line.
    """
    program = "manage.py"
    load_env_file(program)
    try:
        from django.core.management import execute_from_command_line
    except ImportError:
        fail(
            program,
            f"Django cannot be imported by {sys.executable}: run `make run` or `make test` once to set up "
            ".venv, then use .venv/bin/python manage.py (or activate .venv)",
        )
    load_settings(program)
    args = list(argv)
    serving = args[1:2] == ["runserver"] and not {"-h", "--help"} & set(args)
    # With the autoreloader, runserver runs again in a child process (RUN_MAIN=true): say it once.
    if serving and os.environ.get("RUN_MAIN") != "true":
        warn_without_redis(program)
    with configuration_errors(program, traceback="--traceback" in args):
        execute_from_command_line(args)
