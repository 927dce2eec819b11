"""``manage.py api_key create|list|revoke`` as a process on the test session's database: the key is shown
once, on the last line, and only its digest is stored; mistakes are one line."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

from echo.access.apikeys import authenticate_key, publish_grant, read_grant
from echo.models import ApiKey
from tests.helpers.publishing import api_key, unique_name


def database_holds(text: str) -> bool:
    """True if any file of the session's SQLite database (write-ahead log included) contains ``text``.

    Read by another process: closing a descriptor of the file in this one would drop SQLite's locks.
    """
    path = Path(os.environ["DATABASE_URL"].removeprefix("sqlite:///"))
    files = [str(p) for p in path.parent.glob(path.name + "*")]
    assert files
    search = "import sys; sys.exit(any(sys.argv[1].encode() in open(f, 'rb').read() for f in sys.argv[2:]))"
    return subprocess.run([sys.executable, "-c", search, text, *files], check=False).returncode == 1


def assert_one_error_line(result, pattern: str) -> None:  # type: ignore[no-untyped-def]
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.fullmatch(r"CommandError: .*" + pattern + ".*", lines[0]), lines[0]


async def test_create_prints_the_key_once_on_the_last_line_and_stores_only_its_digest() -> None:
    name = unique_name()
    result = api_key("create", name, "--publish", "sensor-*, t-{user_id}", "--read", "dash-*")
    assert result.returncode == 0, result.stderr
    key = result.stdout.splitlines()[-1]
    assert re.fullmatch(r"ek_[A-Za-z0-9_-]{43}", key)
    assert (result.stdout + result.stderr).count(key) == 1
    assert name in result.stderr and "shown this once" in result.stderr

    row = await ApiKey.objects.aget(name=name)
    assert row.digest == hashlib.sha256(key.encode()).hexdigest()
    assert publish_grant(row) == ("sensor-*", "t-{user_id}")
    assert read_grant(row) == ("dash-*",)
    assert database_holds(row.digest)  # the search finds what is there...
    assert not database_holds(key[3:])  # ...and the key is not
    assert (await authenticate_key(key)) == row
    assert await authenticate_key(key + "x") is None


async def test_list_shows_names_grants_and_dates_never_keys_or_digests() -> None:
    limited, reader = unique_name(), unique_name()
    keys = [
        api_key("create", limited, "--publish", "a-*").stdout.strip(),
        api_key("create", reader, "--read", "b-*,c").stdout.strip(),
    ]
    result = api_key("list")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    date = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    assert re.fullmatch(rf"{limited}\s+{date}\s+publish: a-\*  read: -", lines[limited])
    assert re.fullmatch(rf"{reader}\s+{date}\s+publish: -  read: b-\*,c", lines[reader])
    for row in [await ApiKey.objects.aget(name=limited), await ApiKey.objects.aget(name=reader)]:
        assert row.digest not in result.stdout
    assert not any(key.strip() in result.stdout for key in keys)


async def test_revoke_deletes_the_key_and_an_unknown_name_is_one_error_line() -> None:
    name = unique_name()
    key = api_key("create", name, "--publish", "*").stdout.strip()
    assert await authenticate_key(key) is not None
    result = api_key("revoke", name)
    assert result.returncode == 0 and name in result.stdout
    assert await authenticate_key(key) is None
    assert not await ApiKey.objects.filter(name=name).aexists()
    assert_one_error_line(api_key("revoke", name), f"no API key named '{name}'")


def test_bad_names_patterns_and_taken_names_are_one_error_line() -> None:
    name = unique_name()
    assert api_key("create", name, "--publish", "*").returncode == 0
    assert_one_error_line(api_key("create", name, "--publish", "*"), "exists already")
    assert_one_error_line(api_key("create", "no spaces", "--publish", "*"), "invalid key name")
    assert_one_error_line(api_key("create", "x" * 65, "--publish", "*"), "at most 64")
    assert_one_error_line(api_key("create", unique_name(), "--publish", "Caps"), "invalid topic pattern")
    assert_one_error_line(api_key("create", unique_name(), "--read", "a,b c"), "invalid topic pattern")
    # Finding 3: a pattern that once became a broken regular expression (a traceback of 47 lines).
    assert_one_error_line(
        api_key("create", unique_name(), "--read", "user-{user_id}{user_id}"), "invalid topic pattern"
    )
    assert_one_error_line(api_key("create", unique_name(), "--publish", "a" + "*" * 20), "more than 8")
    assert_one_error_line(api_key("create", unique_name()), "no grant can do nothing")
    assert not ApiKey.objects.filter(name__in=["no spaces", "x" * 65]).exists()
