"""`echo` as a reusable app: a second, minimal Django project adds it and publishes from its own model.

The project is written to a temporary directory as someone would write it (docs/reusable-app.md):
`echo` in INSTALLED_APPS, its URLs included under `live/`, its WebSocket routes in the project's own
`asgi.py`, and a `shop` app whose `Order` model publishes on `post_save`. It sees this
repository only through a directory holding a link to `echo/`, so an import of `wsproject` (or of
anything else here) fails instead of passing unnoticed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import websockets

from tests.helpers.clients import next_echo, receive_frames
from tests.helpers.processes import ROOT, Server, http_get, start_server, timeout

pytestmark = pytest.mark.system  # starts processes of its own (docs/testing.md: tiers)

REDIS_URL = os.environ["REDIS_URL"]  # the session's Redis (tests/conftest.py sets it)

SETTINGS = """\
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
REPO = Path(os.environ["ECHO_REPOSITORY"])  # this repository's checkout (templates, node_modules)

SECRET_KEY = os.environ["MYSITE_SECRET_KEY"]
DEBUG = False
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]

INSTALLED_APPS = [
    "daphne",  # before staticfiles: `manage.py runserver` serves WebSockets too
    "django.contrib.auth",  # echo's topic rules and API keys are about users
    "django.contrib.contenttypes",
    "django.contrib.staticfiles",
    "echo",
    "shop",
]

ROOT_URLCONF = "mysite.urls"
ASGI_APPLICATION = "mysite.asgi.application"
# The page's template and its chart library come from the repository (README: Use it in your own
# project): a project copies the template or lists the repository's templates directory, and serves
# uPlot from npm's package (here the repository's node_modules) as static/vendor/uplot.
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [REPO / "templates"],
        "APP_DIRS": True,
    }
]
STATICFILES_DIRS = [("vendor/uplot", REPO / "node_modules" / "uplot" / "dist")]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "static/"
USE_TZ = True

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "echo.layer.RedisFanoutChannelLayer",
        "CONFIG": {
            "hosts": [os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")],
            "prefix": os.environ.get("CHANNEL_LAYER_PREFIX", "mysite"),
        },
    }
}

# Errors with their tracebacks on the console, so that a failing test shows them.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "INFO"},
}
"""

URLS = """\
from django.urls import include, path

urlpatterns = [
    path("live/", include("echo.urls")),
]
"""

ASGI = """\
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
django_asgi_app = get_asgi_application()  # sets Django up before the imports below

from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator

from echo.routing import websocket_urlpatterns

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(URLRouter(websocket_urlpatterns)),
    }
)
"""

MODELS = """\
from django.db import models


class Order(models.Model):
    total = models.DecimalField(max_digits=10, decimal_places=2)
"""

SIGNALS = """\
from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from echo.publishing.broadcast import publish
from shop.models import Order


@receiver(post_save, sender=Order)
def order_saved(sender, instance, **kwargs):
    # After the commit, so that browsers never see an order that was rolled back.
    transaction.on_commit(lambda: publish("orders", {"id": instance.pk, "total": float(instance.total)}))
"""

APPS = """\
from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "shop"

    def ready(self):
        from shop import signals  # noqa: F401 - connects the receivers
"""

MANAGE = """\
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
"""

FILES = {
    "mysite/__init__.py": "",
    "mysite/settings.py": SETTINGS,
    "mysite/urls.py": URLS,
    "mysite/asgi.py": ASGI,
    "shop/__init__.py": "",
    "shop/apps.py": APPS,
    "shop/models.py": MODELS,
    "shop/signals.py": SIGNALS,
    "shop/migrations/__init__.py": "",
    "manage.py": MANAGE,
}


@dataclass
class Site:
    """The second project: where it lives, the environment its commands run in, its running server."""

    dir: Path
    env: dict[str, str]
    server: Server = field(init=False)

    def manage(self, *args: str) -> str:
        """Run one of its ``manage.py`` commands to completion; return its output."""
        done = subprocess.run(  # noqa: PLW1510 - the exit code is asserted, with the output
            [sys.executable, "manage.py", *args],
            cwd=self.dir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout(60),
        )
        assert done.returncode == 0, f"manage.py {' '.join(args)}:\n{done.stdout}{done.stderr}"
        return done.stdout + done.stderr

    def create_order(self, total: str) -> None:
        """Save an Order as the project's own code would: its post_save receiver publishes it."""
        self.manage("shell", "-c", f"from shop.models import Order; Order.objects.create(total={total!r})")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The second project, migrated, served by its own `manage.py runserver` (daphne) on a free port."""
    base = tmp_path_factory.mktemp("reusable")
    project = base / "project"
    for name, text in FILES.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    # The only thing the project can import from this repository is the app.
    lib = base / "lib"
    lib.mkdir()
    (lib / "echo").symlink_to(ROOT / "echo", target_is_directory=True)
    prefix = "mysite-test-" + uuid.uuid4().hex[:8]
    env = {  # nothing from this test session's environment (its DJANGO_SETTINGS_MODULE above all)
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(lib),
        "DJANGO_SETTINGS_MODULE": "mysite.settings",
        "MYSITE_SECRET_KEY": "test-" + uuid.uuid4().hex,
        "ECHO_REPOSITORY": str(ROOT),
        "REDIS_URL": REDIS_URL,
        "CHANNEL_LAYER_PREFIX": prefix,
        "PYTHONUNBUFFERED": "1",
    }
    site = Site(project, env)
    assert "0001_initial" in site.manage("makemigrations", "shop")
    site.manage("migrate", "--noinput")
    # --insecure: serve the static files with DEBUG off, as the page needs them.
    manage_py = str(project / "manage.py")
    command = [sys.executable, manage_py, "runserver", "127.0.0.1:0", "--noreload", "--insecure"]
    try:
        with start_server(command, env) as server:
            site.server = server
            yield site
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()


async def test_an_order_saved_in_another_project_reaches_a_websocket_client(site: Site) -> None:
    server = site.server
    log_start = len(server.output.text())
    async with websockets.connect(
        server.ws_url("/ws/echo/?topics=orders&history=0"), origin=server.origin
    ) as ws:
        await ws.send("hi")
        assert await next_echo(ws) == "hi"

        await asyncio.to_thread(site.create_order, "12.50")
        [first] = await receive_frames(ws, "data", 1, strict=True)
        await asyncio.to_thread(site.create_order, "3.99")
        [second] = await receive_frames(ws, "data", 1, strict=True)

    assert first["topic"] == second["topic"] == "orders"
    assert first["values"] == {"id": 1, "total": 12.5}
    assert second["values"] == {"id": 2, "total": 3.99}
    assert isinstance(first["epoch"], str) and first["epoch"]
    assert second["epoch"] == first["epoch"]
    assert second["seq"] == first["seq"] + 1
    assert isinstance(first["ts"], float)
    assert "replay" not in first

    # The app's HTTP routes answer under the prefix the project chose.
    status, body = await asyncio.to_thread(http_get, server.http_url("/live/api/topics"))
    assert status == 200, body
    assert {"name": "orders", "seq": second["seq"]} in json.loads(body)["topics"]
    assert "Traceback" not in server.output.text()[log_start:]


async def test_push_data_comes_with_the_app(site: Site) -> None:
    server = site.server
    async with websockets.connect(
        server.ws_url("/ws/echo/?topics=prices&history=0"), origin=server.origin
    ) as ws:
        output = await asyncio.to_thread(site.manage, "push_data", "--count", "2", "--rate", "50", "-v", "2")
        frames = await receive_frames(ws, "data", 2, strict=True)
    published = re.findall(r"^published prices (\S+) (\d+)$", output, re.MULTILINE)
    assert [(f["epoch"], str(f["seq"])) for f in frames] == published
    assert all(set(f["values"]) == {"price"} for f in frames)


@pytest.mark.parametrize("origin", ["http://evil.example", None])
async def test_the_projects_origin_validator_refuses_other_origins_and_none(
    site: Site, origin: str | None
) -> None:
    """Channels' AllowedHostsOriginValidator, unlike this repository's, also refuses a missing Origin."""
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with websockets.connect(site.server.ws_url(), origin=origin):
            pass
    assert refused.value.response.status_code == 403


async def test_the_page_renders_under_the_projects_prefix(site: Site) -> None:
    log_start = len(site.server.output.text())
    status, body = await asyncio.to_thread(http_get, site.server.http_url("/live/"))
    assert status == 200, site.server.output.text()[log_start:]
    assert "<title>Live data over WebSockets</title>" in body
    assert '<script type="module" src="/static/echo/app.js">' in body
    assert 'data-topics-url="/live/api/topics"' in body  # the page asks for topics where they are


async def test_every_file_the_page_loads_is_served(site: Site) -> None:
    # Read from the app's static files, not from the page, so that this holds on its own.
    pending = ["/static/echo/app.js", "/static/echo/style.css", "/static/vendor/uplot/uPlot.min.css"]
    seen: set[str] = set()
    while pending:
        url = pending.pop()
        if url in seen:
            continue
        status, body = await asyncio.to_thread(http_get, site.server.http_url(url))
        assert status == 200, url
        seen.add(url)
        for imported in re.findall(r'^import .* from "([^"]+)";$', body, re.MULTILINE):
            pending.append(urllib.parse.urljoin(url, imported))
    assert "/static/vendor/uplot/uPlot.esm.js" in seen
