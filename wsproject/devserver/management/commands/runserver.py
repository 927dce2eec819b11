"""``manage.py runserver``: daphne's development server, with ``wsproject/daphne_compat.py`` installed."""

from __future__ import annotations

from typing import Any

from django.core.management import CommandError

try:
    from daphne.management.commands.runserver import Command as DaphneRunserver
except ImportError as error:  # the production image: daphne is a development dependency
    from django.core.management.commands.runserver import Command as DaphneRunserver

    MISSING: str | None = str(error)
else:
    MISSING = None


class Command(DaphneRunserver):
    help = "Starts daphne's development server (HTTP and WebSockets) with this project's fixes to it."

    def handle(self, *args: Any, **options: Any) -> None:
        """Called once per process (twice with the autoreloader): checks and installs, then daphne's."""
        if MISSING is not None:
            raise CommandError(
                f"runserver is daphne, a development dependency ({MISSING}): pip install -r "
                "requirements-dev.txt, or run the production server: python -m wsproject.server"
            )
        from wsproject import daphne_compat, versions

        if problem := daphne_compat.refusal() or versions.app_refusal():
            raise CommandError(problem)
        daphne_compat.install()
        super().handle(*args, **options)
