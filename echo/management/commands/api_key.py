"""``manage.py api_key create|list|revoke``: the API keys programs publish with (``echo.apikeys``)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from echo.apikeys import ApiKeyError, create_key, revoke_key
from echo.models import ApiKey


class Command(BaseCommand):
    help = (
        "Manage API keys for the HTTP publish API. 'create NAME [--topics PATTERN,...]' prints the new "
        "key on its last line, once (only its digest is stored); 'list' shows names, topics and dates; "
        "'revoke NAME' deletes a key."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="{create,list,revoke}")
        create = actions.add_parser("create", help="make a key and print it (once)")
        create.add_argument("name", help="a slug: letters, digits, '-' and '_'")
        create.add_argument(
            "--topics",
            default="",
            help="comma-separated topic patterns the key may publish to ('*' any run of topic "
            "characters); default: every topic",
        )
        actions.add_parser("list", help="names, topics and dates (never the keys)")
        revoke = actions.add_parser("revoke", help="delete a key: it is refused from then on")
        revoke.add_argument("name")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options["action"] == "create":
                self._create(options["name"], options["topics"])
            elif options["action"] == "list":
                self._list()
            else:
                revoke_key(options["name"])
                self.stdout.write(f"API key {options['name']!r} revoked")
        except ApiKeyError as exc:
            raise CommandError(str(exc)) from None
        except DatabaseError as exc:
            raise CommandError(f"the database is not ready ({exc}): run 'manage.py migrate'") from None

    def _create(self, name: str, topics: str) -> None:
        row, key = create_key(name, topics)
        scope = f"topics {row.topics}" if row.topics else "every topic"
        # The explanation goes to stderr, the key alone to stdout: KEY=$(manage.py api_key create ...)
        self.stderr.write(
            f"API key {row.name!r} for {scope}. It is shown this once and stored only as a digest; "
            "send it as 'Authorization: Bearer <key>'.",
            style_func=str,  # information, not an error: no red
        )
        self.stderr.flush()
        self.stdout.write(key)

    def _list(self) -> None:
        keys = list(ApiKey.objects.all())
        if not keys:
            self.stdout.write("No API keys (make one with 'manage.py api_key create NAME').")
            return
        width = max(len("name"), *(len(key.name) for key in keys))
        self.stdout.write(f"{'name':{width}}  {'created (UTC)':19}  topics")
        for key in keys:
            created = key.created.strftime("%Y-%m-%d %H:%M:%S")
            self.stdout.write(f"{key.name:{width}}  {created:19}  {key.topics or '* (every topic)'}")
