"""The secrets of docker compose's stack, made the first time into a volume: `docker compose up` as typed.

    python deploy/compose_secrets.py init DIR            # compose's one-shot `secrets` service
    python deploy/compose_secrets.py exec DIR -- CMD...  # the image's entrypoint: every app container

``init`` writes each secret that ``DIR`` lacks (random, file mode 0600); an exported value (or one in
compose's ``.env``) replaces what ``DIR`` holds, so that PostgreSQL, which reads only its file
(``POSTGRES_PASSWORD_FILE``), and the app agree. ``exec`` exports ``DJANGO_SECRET_KEY`` from ``DIR``
unless it is set, puts the database password into a ``postgres://USER@HOST/DB`` ``DATABASE_URL``
that names none, and replaces itself with ``CMD``. Without the files (the image run outside compose)
it changes nothing. ``DIR`` is a named volume: ``docker compose down`` keeps it, ``down -v`` deletes it
with the database's, so a new password meets a new database. Only the standard library: it runs before
anything else, in the image's Python.
"""

from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

# file name -> the environment variable that, when set, provides it instead of a random value.
SECRETS = {"django_secret_key": "DJANGO_SECRET_KEY", "postgres_password": "POSTGRES_PASSWORD"}
POSTGRES_SCHEMES = ("postgres", "postgresql", "pgsql")


def generate(name: str) -> str:
    """A new random value. Hex for the password: it goes into a URL and a libpq string unescaped."""
    return secrets.token_hex(24) if name == "postgres_password" else secrets.token_urlsafe(50)


def write_secret(path: Path, value: str) -> None:
    """Write ``value`` to ``path`` readable by its owner only, replacing it in one step (no torn file)."""
    partial = path.with_name(f".{path.name}.partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(value)
    os.replace(partial, path)


def init(directory: Path, environ: dict[str, str]) -> list[str]:
    """Make the secrets ``directory`` lacks, or write the exported ones; say what was done, one line each."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    done = []
    for name, variable in SECRETS.items():
        path = directory / name
        exported = environ.get(variable, "")
        if exported:
            if not path.exists() or path.read_text() != exported:
                write_secret(path, exported)
                done.append(f"{name}: from {variable}")
            else:
                done.append(f"{name}: kept (equal to {variable})")
        elif path.exists():
            done.append(f"{name}: kept")
        else:
            write_secret(path, generate(name))
            done.append(f"{name}: generated")
    return done


def read_secret(directory: Path, name: str) -> str | None:
    try:
        # Trailing line breaks dropped, as the postgres image reads its _FILE variables ("$(< file)").
        return (directory / name).read_text().rstrip("\n") or None
    except FileNotFoundError:
        return None


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` added if it is a PostgreSQL URL that names a user and no password."""
    parts = urlsplit(url)
    if parts.scheme not in POSTGRES_SCHEMES or not parts.username or parts.password is not None:
        return url
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{parts.username}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def environment(directory: Path, environ: dict[str, str]) -> dict[str, str]:
    """``environ`` with the secrets of ``directory`` filled in where the environment has none."""
    result = dict(environ)
    key = read_secret(directory, "django_secret_key")
    if key and not result.get("DJANGO_SECRET_KEY"):
        result["DJANGO_SECRET_KEY"] = key
    password = read_secret(directory, "postgres_password")
    if password and result.get("DATABASE_URL"):
        result["DATABASE_URL"] = with_password(result["DATABASE_URL"], password)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="action", required=True)
    commands.add_parser("init", help="make the missing secrets").add_argument("directory", type=Path)
    run = commands.add_parser("exec", help="run a command with the secrets in its environment")
    run.add_argument("directory", type=Path)
    run.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.action == "init":
        for line in init(args.directory, dict(os.environ)):
            print(f"compose_secrets: {line}", flush=True)
        return
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("exec needs a command after --")
    # Replaced, not a child: the command is the container's PID 1 and gets its signals (SIGTERM on stop).
    os.execvpe(command[0], command, environment(args.directory, dict(os.environ)))  # noqa: S606


if __name__ == "__main__":
    main()
