"""``manage.py api_key create|list|revoke``: the API keys programs publish with (``echo.access.apikeys``)."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from echo.access.apikeys import ApiKeyError, create_key, revoke_key
from echo.models import ApiKey


class Command(BaseCommand):
    help = (
        "Manage API keys for the HTTP publish API and connection tokens. 'create NAME --publish "
        "PATTERN,... --read PATTERN,...' prints the new key on its last line, once (only its digest is "
        "stored); a key has only the grants named. 'list' shows names, grants and dates; 'revoke NAME' "
        "deletes a key and closes the sockets opened with its tokens."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="{create,list,revoke}")
        create = actions.add_parser("create", help="make a key and print it (once)")
        create.add_argument("name", help="a slug: letters, digits, '-' and '_'")
        create.add_argument(
            "--publish",
            default="",
            help="comma-separated topic patterns the key may publish to ('*' any run of topic "
            "characters, '*' alone every topic); default: none",
        )
        create.add_argument(
            "--read",
            default="",
            help="topic patterns the key's connection tokens may read, within WS_TOPIC_ACCESS (a key "
            "passes only 'public' and 'authenticated' rules); default: none",
        )
        # Before grants were separate, --topics meant what a key may publish (and, wrongly, read).
        create.add_argument("--topics", dest="publish", help=argparse.SUPPRESS)
        actions.add_parser("list", help="names, grants and dates (never the keys)")
        revoke = actions.add_parser("revoke", help="delete a key: it is refused from then on")
        revoke.add_argument("name")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options["action"] == "create":
                self._create(options["name"], options["publish"] or "", options["read"])
            elif options["action"] == "list":
                self._list()
            else:
                revoke_key(options["name"])
                self.stdout.write(f"API key {options['name']!r} revoked")
        except ApiKeyError as exc:
            raise CommandError(str(exc)) from None
        except DatabaseError as exc:
            raise CommandError(f"the database is not ready ({exc}): run 'manage.py migrate'") from None

    def _create(self, name: str, publish: str, read: str) -> None:
        row, key = create_key(name, publish=publish, read=read)
        grants = f"publishes to {row.publish_topics or 'nothing'}, reads {row.read_topics or 'nothing'}"
        # The explanation goes to stderr, the key alone to stdout: KEY=$(manage.py api_key create ...)
        self.stderr.write(
            f"API key {row.name!r}: {grants}. It is shown this once and stored only as a digest; "
            "send it as 'Authorization: Bearer <key>'.",
            style_func=str,  # information, not an error: no red
        )
        self.stderr.flush()
        self.stdout.write(key)

    def _list(self) -> None:
        keys = list(ApiKey.objects.all())
        if not keys:
            self.stdout.write(
                "No API keys (make one with 'manage.py api_key create NAME --publish PATTERNS')."
            )
            return
        width = max(len("name"), *(len(key.name) for key in keys))
        self.stdout.write(f"{'name':{width}}  {'created (UTC)':19}  grants")
        for key in keys:
            created = key.created.strftime("%Y-%m-%d %H:%M:%S")
            grants = f"publish: {key.publish_topics or '-'}  read: {key.read_topics or '-'}"
            self.stdout.write(f"{key.name:{width}}  {created:19}  {grants}")
