"""The commands as users type them in a set-up checkout: `manage.py ...` with nothing exported.

Every test runs the real command as a process in the real checkout, in the test session's environment
minus every DJANGO_* variable (conftest exports them for the other tests), so that settings come from
the checkout's `.env.dev` as `make run` writes it. Redis stays the tests' own (REDIS_URL and the
channel-layer prefix are kept). Configuration mistakes must be one line on stderr, never a traceback.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from scripts import devenv
from tests.helpers.processes import (
    LISTENING,
    ROOT,
    OutputWatcher,
    http_get,
    spawn,
    start_server,
    stop,
    timeout,
)
from wsproject.cli import DEFAULT_ENV_FILE, create_dev_env_file, parse_env_file
from wsproject.server import worker_count

MANAGE = [sys.executable, "manage.py"]
RUNSERVER = [*MANAGE, "runserver", "127.0.0.1:0"]
PRINT_SETTINGS = "from django.conf import settings; print('settings:', settings.DEBUG, settings.SECRET_KEY)"
NO_REDIS = "manage.py: no Redis answers at"


def bare_env(**extra: str) -> dict[str, str]:
    """The test session's environment with nothing of Django's exported, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DJANGO_")}
    return {**env, **extra}


def run(command: list[str], env: dict[str, str], seconds: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: PLW1510 - the tests assert the exit code
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout(seconds)
    )


def printed_settings(result: subprocess.CompletedProcess[str]) -> list[str]:
    """DEBUG and SECRET_KEY as PRINT_SETTINGS printed them (the shell may print other lines too)."""
    assert result.returncode == 0, result.stderr
    lines = [line.split()[1:] for line in result.stdout.splitlines() if line.startswith("settings: ")]
    assert len(lines) == 1, result.stdout
    return lines[0]


def assert_one_line(result: subprocess.CompletedProcess[str], pattern: str) -> str:
    """The command failed with exit status 2 and one line on stderr matching ``pattern``, nothing else."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def dev_env_file() -> Iterator[dict[str, str]]:
    """The checkout's .env.dev as `make run` writes it: the one there, else one written and later removed."""
    created = create_dev_env_file(DEFAULT_ENV_FILE)
    try:
        values = parse_env_file(DEFAULT_ENV_FILE.read_text(encoding="utf-8"), ".env.dev")
        if values.get("DJANGO_DEBUG") != "1" or not values.get("DJANGO_SECRET_KEY"):
            pytest.skip(".env.dev was edited (no DJANGO_DEBUG=1 and secret): these tests need make run's")
        yield values
    finally:
        if created:
            DEFAULT_ENV_FILE.unlink(missing_ok=True)


@contextlib.contextmanager
def runserver_with_reloader(env: dict[str, str]) -> Iterator[tuple[OutputWatcher, int]]:
    """`manage.py runserver` as typed, autoreloader and all: its own process group, stopped as a group."""
    process = spawn(RUNSERVER, env, start_new_session=True)
    output = OutputWatcher(process)
    try:
        yield output, int(output.wait_for(LISTENING, seconds=30).group(1))
    finally:
        # The reloader's child server is a second process; Ctrl-C reaches both through the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        stop(process)


def test_set_up_writes_the_env_file_once_and_manage_py_reads_it(tmp_path: Path) -> None:
    env_file = tmp_path / "dev.env"
    env = bare_env(DJANGO_ENV_FILE=str(env_file))
    command = [sys.executable, "-m", "scripts.devenv", "exec", "--", *MANAGE, "shell", "-c", PRINT_SETTINGS]

    first = run(command, env)
    assert f"devenv: wrote {env_file}" in first.stderr
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    written_text = env_file.read_text()
    written = parse_env_file(written_text, "dev.env")
    assert written["DJANGO_DEBUG"] == "1"
    assert len(written["DJANGO_SECRET_KEY"]) >= 50
    assert printed_settings(first) == ["True", written["DJANGO_SECRET_KEY"]]

    second = run(command, env)
    assert "devenv: wrote" not in second.stderr
    assert env_file.read_text() == written_text, "the set-up must never overwrite the file"
    assert printed_settings(second) == ["True", written["DJANGO_SECRET_KEY"]]


def test_check_and_shell_work_with_nothing_exported(dev_env_file: dict[str, str]) -> None:
    checked = run([*MANAGE, "check"], bare_env())
    assert checked.returncode == 0, checked.stderr
    assert "System check identified no issues" in checked.stdout

    shell = run([*MANAGE, "shell", "-c", PRINT_SETTINGS], bare_env())
    assert printed_settings(shell) == ["True", dev_env_file["DJANGO_SECRET_KEY"]]


def test_exported_variables_win_over_the_env_file(dev_env_file: dict[str, str]) -> None:
    env = bare_env(DJANGO_DEBUG="0", DJANGO_SECRET_KEY="exported-secret", DJANGO_ALLOWED_HOSTS="example.com")
    assert printed_settings(run([*MANAGE, "shell", "-c", PRINT_SETTINGS], env)) == [
        "False",
        "exported-secret",
    ]


@pytest.mark.skipif(
    "django.contrib.auth" not in settings.INSTALLED_APPS, reason="no django.contrib.auth: no createsuperuser"
)
def test_createsuperuser_help_with_nothing_exported(dev_env_file: dict[str, str]) -> None:
    result = run([*MANAGE, "createsuperuser", "--help"], bare_env())
    assert result.returncode == 0, result.stderr
    assert "--username" in result.stdout


def test_push_data_with_nothing_exported(dev_env_file: dict[str, str], topic: str) -> None:
    result = run([*MANAGE, "push_data", "--count", "1", "--topic", topic, "-v", "2"], bare_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"published {topic} "), result.stdout


@pytest.mark.system
def test_runserver_with_nothing_exported_serves_the_page_in_debug(dev_env_file: dict[str, str]) -> None:
    with start_server([*RUNSERVER, "--noreload"], bare_env()) as server:
        status, body = http_get(server.http_url("/"))
        assert status == 200
        assert 'id="chart"' in body
        # Django's debug 404 page: DEBUG came from .env.dev.
        status, body = http_get(server.http_url("/no-such-page"))
        assert status == 404
        assert "URLconf" in body
        assert NO_REDIS not in server.output.text()


@pytest.mark.system
def test_runserver_without_redis_says_how_to_get_one_once_and_serves(
    dev_env_file: dict[str, str], closed_port: int
) -> None:
    url = f"redis://127.0.0.1:{closed_port}/0"
    with runserver_with_reloader(bare_env(REDIS_URL=url)) as (output, port):
        status, body = http_get(f"http://127.0.0.1:{port}/")
        assert status == 200
        assert 'id="chart"' in body
        warnings = [line for line in output.text().splitlines() if line.startswith(NO_REDIS)]
    assert len(warnings) == 1, output.text()
    assert f"REDIS_URL={url}" in warnings[0]
    assert "make run" in warnings[0]
    assert "redis-server" in warnings[0]


PRODUCTION_MISTAKES = {
    # (exported, expected line)
    "no secret": ({"DJANGO_DEBUG": "0", "DJANGO_ENV_FILE": ""}, r"^manage\.py: DJANGO_SECRET_KEY is not set"),
    # The file's DJANGO_DEBUG=1 is overridden; its secret is used, and the host names are still required.
    "no allowed hosts": ({"DJANGO_DEBUG": "0"}, r"^manage\.py: DJANGO_ALLOWED_HOSTS is not set"),
    "bad boolean": ({"DJANGO_DEBUG": "maybe"}, r"^manage\.py: DJANGO_DEBUG='maybe': expected one of 1/0"),
}


@pytest.mark.parametrize("case", sorted(PRODUCTION_MISTAKES))
@pytest.mark.system
def test_a_settings_mistake_is_one_line_naming_what_to_set(dev_env_file: dict[str, str], case: str) -> None:
    exported, expected = PRODUCTION_MISTAKES[case]
    assert_one_line(run([*RUNSERVER, "--noreload"], bare_env(**exported)), expected)


ENV_FILE_MISTAKES = {
    # (file contents, expected line)
    "bad boolean": ("DJANGO_DEBUG=perhaps\n", r"^manage\.py: DJANGO_DEBUG='perhaps': expected one of"),
    "not KEY=VALUE": (
        "DJANGO_DEBUG=1\nhunter2-not-a-setting\n",
        r"^manage\.py: \S+ line 2: expected KEY=VALUE$",
    ),
}


@pytest.mark.parametrize("case", sorted(ENV_FILE_MISTAKES))
def test_an_env_file_mistake_is_one_line(tmp_path: Path, case: str) -> None:
    contents, expected = ENV_FILE_MISTAKES[case]
    env_file = tmp_path / "dev.env"
    env_file.write_text(contents)
    line = assert_one_line(run([*MANAGE, "check"], bare_env(DJANGO_ENV_FILE=str(env_file))), expected)
    assert "hunter2" not in line, "a line of the file may be a secret: never echo it"


def test_a_missing_env_file_named_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.env"
    result = run([*MANAGE, "check"], bare_env(DJANGO_ENV_FILE=str(missing)))
    assert_one_line(result, rf"^manage\.py: DJANGO_ENV_FILE={missing}: cannot read it")


def test_a_python_without_django_is_one_line() -> None:
    # -S: the venv's Python without its site-packages, as a Python where Django was never installed.
    result = run([sys.executable, "-S", "manage.py", "check"], bare_env())
    assert_one_line(result, r"^manage\.py: Django cannot be imported .*\.venv/bin/python manage\.py")


@pytest.mark.system
def test_the_production_server_reads_no_env_file(dev_env_file: dict[str, str]) -> None:
    # .env.dev has DEBUG on and a secret: the production server must refuse as if it were not there,
    # in one line as manage.py does (its main() calls wsproject.cli.load_settings()).
    result = run(devenv.production_command("127.0.0.1", "0"), bare_env())
    assert_one_line(result, r"^wsproject\.server: DJANGO_SECRET_KEY is not set")


@pytest.mark.system
def test_the_production_server_ignores_the_env_files_debug(dev_env_file: dict[str, str]) -> None:
    env = bare_env(DJANGO_SECRET_KEY="exported-secret", DJANGO_ALLOWED_HOSTS="127.0.0.1")
    with start_server(devenv.production_command("127.0.0.1", "0"), env) as server:
        status, body = http_get(server.http_url("/no-such-page"))
    assert status == 404
    assert "URLconf" not in body, "the production server ran with DEBUG on"
    assert "Not Found" in body


@pytest.mark.system
def test_make_serve_runs_production_settings_whatever_is_exported(
    dev_env_file: dict[str, str], tmp_path: Path
) -> None:
    env = bare_env(DJANGO_DEBUG="1", PORT="0", HOST="127.0.0.1", DJANGO_STATIC_ROOT=str(tmp_path))
    with start_server([sys.executable, "-m", "scripts.devenv", "serve"], env) as server:
        # make serve runs a worker per CPU: uvicorn's supervisor says it runs before they all listen.
        server.output.wait_for_count(r"Started server process \[\d+\]", worker_count("auto"), 30)
        status, body = http_get(server.http_url("/no-such-page"))
    assert status == 404
    assert "URLconf" not in body, "make serve ran with DEBUG on"
    assert (tmp_path / "staticfiles.json").exists(), "collectstatic did not run with production storage"
