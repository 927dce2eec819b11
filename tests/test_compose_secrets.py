"""deploy/compose_secrets.py, run as compose runs it (a process of the image's Python), outside Docker.

compose's `secrets` service runs `init` into a volume; every app container starts through the image's
ENTRYPOINT, `exec`, which exports them. Here the volume is a temporary directory and the containers'
commands are processes; the Dockerfile's own ENTRYPOINT line is the one run.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import dj_database_url
import pytest

from tests.helpers.processes import ROOT, timeout

SCRIPT = ROOT / "deploy" / "compose_secrets.py"
SECRET_VARIABLES = ("DJANGO_SECRET_KEY", "POSTGRES_PASSWORD")
# What a container's environment shows the command run through the entrypoint, as JSON.
SHOW_ENV = (
    "import json, os; "
    "print(json.dumps({k: os.environ.get(k) for k in ('DJANGO_SECRET_KEY', 'DATABASE_URL')}))"
)


def bare_env(**extra: str) -> dict[str, str]:
    """The environment of a shell with nothing exported about this stack (the issue's "as typed")."""
    env = {key: value for key, value in os.environ.items() if key not in SECRET_VARIABLES}
    env.pop("DATABASE_URL", None)
    # The image holds no .env.dev (it is the checkout's development file): read none, as there.
    return {**env, "DJANGO_ENV_FILE": "", **extra}


def run_script(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(  # noqa: PLW1510 - asserted below, with the output
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout(30),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def entrypoint(directory: Path) -> list[str]:
    """The Dockerfile's ENTRYPOINT, with the volume's mount point replaced by ``directory``."""
    line = next(
        line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("ENTRYPOINT ")
    )
    command = json.loads(line.removeprefix("ENTRYPOINT "))
    assert command[:2] == ["python", "deploy/compose_secrets.py"], command
    return [sys.executable, *command[1:]]


def through_entrypoint(
    directory: Path, env: dict[str, str], *command: str
) -> subprocess.CompletedProcess[str]:
    full = [part if part != "/secrets" else str(directory) for part in entrypoint(directory)]
    result = subprocess.run(  # noqa: PLW1510 - asserted by the callers
        [*full, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout(60)
    )
    return result


def shown_env(directory: Path, env: dict[str, str]) -> dict[str, str | None]:
    result = through_entrypoint(directory, env, sys.executable, "-c", SHOW_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_the_first_run_makes_each_secret_readable_by_its_owner_only(tmp_path: Path) -> None:
    volume = tmp_path / "secrets"
    output = run_script("init", str(volume), env=bare_env()).stdout
    assert "django_secret_key: generated" in output and "postgres_password: generated" in output, output
    key = (volume / "django_secret_key").read_text()
    password = (volume / "postgres_password").read_text()
    assert len(key) >= 50 and re.fullmatch(r"[0-9a-f]{48}", password), (key, password)
    for path in volume.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(volume.stat().st_mode) & 0o077 == 0
    # Nothing printed gives a secret away (compose shows the one-shot's output in `up`).
    assert key not in output and password not in output
    assert {path.name for path in volume.iterdir()} == {"django_secret_key", "postgres_password"}


def test_every_later_run_keeps_them(tmp_path: Path) -> None:
    volume = tmp_path / "secrets"
    run_script("init", str(volume), env=bare_env())
    before = {path.name: path.read_text() for path in volume.iterdir()}
    output = run_script("init", str(volume), env=bare_env()).stdout
    assert output.count(": kept") == 2, output
    assert {path.name: path.read_text() for path in volume.iterdir()} == before


def test_two_stacks_get_different_secrets(tmp_path: Path) -> None:
    run_script("init", str(tmp_path / "one"), env=bare_env())
    run_script("init", str(tmp_path / "two"), env=bare_env())
    for name in ("django_secret_key", "postgres_password"):
        assert (tmp_path / "one" / name).read_text() != (tmp_path / "two" / name).read_text()


def test_an_exported_value_wins_and_is_what_postgres_reads(tmp_path: Path) -> None:
    volume = tmp_path / "secrets"
    run_script("init", str(volume), env=bare_env())
    output = run_script("init", str(volume), env=bare_env(POSTGRES_PASSWORD="from-dot-env")).stdout
    assert "postgres_password: from POSTGRES_PASSWORD" in output
    assert "django_secret_key: kept" in output
    # PostgreSQL reads only its file (POSTGRES_PASSWORD_FILE); the app's URL gets the same value.
    assert (volume / "postgres_password").read_text() == "from-dot-env"
    assert stat.S_IMODE((volume / "postgres_password").stat().st_mode) == 0o600
    env = bare_env(DATABASE_URL="postgres://wsdemo@postgres:5432/wsdemo")
    assert dj_database_url.parse(shown_env(volume, env)["DATABASE_URL"])["PASSWORD"] == "from-dot-env"


def test_the_entrypoint_exports_the_volumes_secrets_unless_set(tmp_path: Path) -> None:
    volume = tmp_path / "secrets"
    run_script("init", str(volume), env=bare_env())
    key = (volume / "django_secret_key").read_text()
    password = (volume / "postgres_password").read_text()

    shown = shown_env(
        volume, bare_env(DJANGO_SECRET_KEY="", DATABASE_URL="postgres://wsdemo@postgres:5432/wsdemo")
    )
    assert shown["DJANGO_SECRET_KEY"] == key
    assert shown["DATABASE_URL"] == f"postgres://wsdemo:{password}@postgres:5432/wsdemo"

    exported = shown_env(volume, bare_env(DJANGO_SECRET_KEY="exported", DATABASE_URL="postgres://u:own@db/x"))
    assert exported == {"DJANGO_SECRET_KEY": "exported", "DATABASE_URL": "postgres://u:own@db/x"}
    sqlite = shown_env(volume, bare_env(DATABASE_URL="sqlite:////tmp/x.sqlite3"))
    assert sqlite["DATABASE_URL"] == "sqlite:////tmp/x.sqlite3"


def test_without_a_volume_the_entrypoint_changes_nothing(tmp_path: Path) -> None:
    """The image run outside compose (no /secrets content): the environment is the operator's."""
    shown = shown_env(tmp_path / "absent", bare_env(DATABASE_URL="postgres://wsdemo@db/wsdemo"))
    assert shown == {"DJANGO_SECRET_KEY": None, "DATABASE_URL": "postgres://wsdemo@db/wsdemo"}


def test_the_app_starts_with_the_volumes_key_and_refuses_without_it(tmp_path: Path) -> None:
    """Django's own startup, as every app container runs it: `manage.py check --deploy`-level settings
    (DEBUG off, so a secret key is required) load with the generated key and fail with none."""
    volume = tmp_path / "secrets"
    env = bare_env(DJANGO_SECRET_KEY="", DJANGO_DEBUG="0", DJANGO_ALLOWED_HOSTS="localhost")
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    show_key = "from django.conf import settings; print(len(settings.SECRET_KEY))"
    refused = through_entrypoint(volume, env, sys.executable, "manage.py", "shell", "-c", show_key)
    assert refused.returncode != 0 and "DJANGO_SECRET_KEY" in refused.stdout + refused.stderr

    run_script("init", str(volume), env=bare_env())
    started = through_entrypoint(volume, env, sys.executable, "manage.py", "shell", "-c", show_key)
    assert started.returncode == 0, started.stdout + started.stderr
    assert int(started.stdout.strip().splitlines()[-1]) == len((volume / "django_secret_key").read_text())


@pytest.mark.parametrize("bad", [[], ["--"]])
def test_exec_without_a_command_is_a_usage_error(tmp_path: Path, bad: list[str]) -> None:
    result = subprocess.run(  # noqa: PLW1510 - asserted below
        [sys.executable, str(SCRIPT), "exec", str(tmp_path), *bad],
        capture_output=True,
        text=True,
        timeout=timeout(30),
    )
    assert result.returncode == 2 and "usage" in result.stderr
