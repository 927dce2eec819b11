"""PostgreSQL for tests: a fresh database of the test's own on the local server, dropped afterwards.

The server is the one this machine kind runs on 127.0.0.1:5432 (user ``postgres``, trust
authentication). Without one, the tests that need it skip with the reason, except under ``CI=true``,
where they fail: CI must not pass by skipping them.

The fixtures ``postgres_url`` (the ``DATABASE_URL`` of a migrated database) and ``empty_postgres_url``
(one with no tables) are in ``tests/conftest.py``. Each test gets its own, so tests never see each
other's users.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import psycopg
from psycopg import sql

from tests.helpers.processes import ROOT, timeout
from tests.helpers.skips import skip_or_fail

HOST, PORT, USER = "127.0.0.1", 5432, "postgres"
SERVER_URL = f"postgres://{USER}@{HOST}:{PORT}"
# Connected to for CREATE and DROP DATABASE: one always exists.
MAINTENANCE_URL = f"{SERVER_URL}/postgres"


@functools.cache
def unavailable() -> str | None:
    """Why no PostgreSQL can be used here, or None if one answers (asked once per session)."""
    try:
        with psycopg.connect(MAINTENANCE_URL, connect_timeout=max(1, round(timeout(3)))):
            return None
    except psycopg.Error as exc:
        return f"no PostgreSQL at {HOST}:{PORT} for user {USER} ({' '.join(str(exc).split())})"


def require_postgres() -> None:
    """Skip the calling test if no PostgreSQL answers; fail it instead under CI=true."""
    if reason := unavailable():
        skip_or_fail(reason)


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """Create an empty database with a unique name; yield its URL; drop it afterwards."""
    name = "wsdemo_test_" + uuid.uuid4().hex[:12]
    with psycopg.connect(MAINTENANCE_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{SERVER_URL}/{name}"
    finally:
        with psycopg.connect(MAINTENANCE_URL, autocommit=True) as conn:
            # FORCE: a server process that was killed rather than stopped may leave a session behind.
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def migrate(database_url: str) -> None:
    """Apply the project's migrations to ``database_url``, as ``make run`` and compose do: manage.py."""
    result = subprocess.run(  # noqa: PLW1510 - asserted below, with the output
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=timeout(60),
    )
    assert result.returncode == 0, f"migrate failed on {database_url}:\n{result.stdout}{result.stderr}"
