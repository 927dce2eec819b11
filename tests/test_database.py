"""Users and the database, as an operator meets them: `createsuperuser --noinput`, then the admin.

Each user is made by the real command in its own process, then logs into the Django admin of a real
production server process (the one `make serve` and compose run) given the same ``DATABASE_URL``,
through a real HTTP client that keeps cookies and sends the CSRF token back with the form, as a
browser does. Both databases: the test session's SQLite file (conftest) and a fresh PostgreSQL
database (tests/helpers/postgres.py: skipped without a local PostgreSQL, failed under CI=true). And `make run`
and `make serve` (scripts.devenv) migrate a new database by themselves before serving.
"""

from __future__ import annotations

import http.cookiejar
import re
import secrets
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from scripts import devenv
from tests.helpers.processes import ROOT, Server, start_server, timeout

PRODUCTION = devenv.production_command("127.0.0.1", "0")
ADMIN_INDEX = "Site administration"
REFUSED = "Please enter the correct username and password"
CSRF_FIELD = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


@dataclass
class Credentials:
    username: str
    password: str
    email: str


def new_credentials() -> Credentials:
    """A user name of this test's own, so that users made by other tests never answer for it."""
    name = "admin-" + uuid.uuid4().hex[:10]
    return Credentials(name, secrets.token_urlsafe(16), f"{name}@example.com")


def create_superuser(env: dict[str, str], user: Credentials) -> None:
    """`manage.py createsuperuser --noinput`, the user taken from DJANGO_SUPERUSER_* as Django documents."""
    superuser_env = {
        **env,
        "DJANGO_SUPERUSER_USERNAME": user.username,
        "DJANGO_SUPERUSER_PASSWORD": user.password,
        "DJANGO_SUPERUSER_EMAIL": user.email,
    }
    result = subprocess.run(  # noqa: PLW1510 - asserted below, with the output
        [sys.executable, "manage.py", "createsuperuser", "--noinput"],
        cwd=ROOT,
        env=superuser_env,
        capture_output=True,
        text=True,
        timeout=timeout(60),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Superuser created successfully." in result.stdout


@dataclass
class Page:
    status: int
    path: str  # where redirects ended
    body: str


class AdminBrowser:
    """The HTTP side of a browser on the admin: a cookie jar, redirects followed, forms posted back."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def open(self, path: str, form: dict[str, str] | None = None) -> Page:
        """GET ``path``, or POST ``form`` to it (urlencoded, with the Origin a browser sends)."""
        data = None if form is None else urllib.parse.urlencode(form).encode()
        headers = {} if form is None else {"Origin": f"http://{self.server.host}:{self.server.port}"}
        request = urllib.request.Request(self.server.http_url(path), data=data, headers=headers)
        try:
            with self.opener.open(request, timeout=timeout(10)) as response:
                return Page(
                    response.status, urllib.parse.urlsplit(response.url).path, response.read().decode()
                )
        except urllib.error.HTTPError as error:
            return Page(error.code, urllib.parse.urlsplit(error.url).path, error.read().decode())

    def cookie(self, name: str) -> str | None:
        return next((cookie.value for cookie in self.cookies if cookie.name == name), None)

    def log_in(self, user: Credentials) -> Page:
        """Open the admin, get sent to its login form, and post it back with the form's CSRF token."""
        form_page = self.open("/admin/")
        assert (form_page.status, form_page.path) == (200, "/admin/login/"), form_page
        assert ADMIN_INDEX not in form_page.body
        token = CSRF_FIELD.search(form_page.body)
        assert token, "no CSRF token in the login form"
        assert self.cookie("csrftoken"), "the login form set no CSRF cookie"
        form = {
            "csrfmiddlewaretoken": token.group(1),
            "username": user.username,
            "password": user.password,
            "next": "/admin/",
        }
        return self.open("/admin/login/?next=/admin/", form)


def assert_logged_in(page: Page, browser: AdminBrowser, user: Credentials) -> None:
    assert (page.status, page.path) == (200, "/admin/"), (page.status, page.path)
    assert ADMIN_INDEX in page.body
    assert user.username in page.body  # "Welcome, admin-..."
    assert browser.cookie("sessionid"), "logged in without a session cookie"


def assert_refused(page: Page, browser: AdminBrowser) -> None:
    assert (page.status, page.path) == (200, "/admin/login/"), (page.status, page.path)
    assert REFUSED in page.body
    assert ADMIN_INDEX not in page.body
    assert browser.cookie("sessionid") is None
    # And the admin still sends this browser to the login form.
    assert browser.open("/admin/").path == "/admin/login/"


@pytest.fixture
def admin_server(database_env: dict[str, str]) -> Iterator[Server]:
    with start_server(PRODUCTION, database_env) as server:
        yield server


def test_a_superuser_made_with_noinput_logs_into_the_admin(
    database_env: dict[str, str], admin_server: Server
) -> None:
    user = new_credentials()
    create_superuser(database_env, user)
    browser = AdminBrowser(admin_server)
    assert_logged_in(browser.log_in(user), browser, user)
    # The session is what keeps it logged in: the next request needs no password.
    page = browser.open("/admin/")
    assert (page.status, page.path) == (200, "/admin/")
    assert ADMIN_INDEX in page.body
    assert "Traceback" not in admin_server.output.text()


def test_a_wrong_password_is_refused(database_env: dict[str, str], admin_server: Server) -> None:
    user = new_credentials()
    create_superuser(database_env, user)
    browser = AdminBrowser(admin_server)
    wrong = Credentials(user.username, user.password + "x", user.email)
    assert_refused(browser.log_in(wrong), browser)
    stranger = AdminBrowser(admin_server)
    assert_refused(stranger.log_in(new_credentials()), stranger)  # a user never made


def test_the_login_form_is_refused_without_its_csrf_token(
    admin_server: Server, database_env: dict[str, str]
) -> None:
    user = new_credentials()
    create_superuser(database_env, user)
    browser = AdminBrowser(admin_server)
    assert browser.open("/admin/login/").status == 200  # the CSRF cookie is set, the token not sent
    form = {"username": user.username, "password": user.password, "next": "/admin/"}
    page = browser.open("/admin/login/?next=/admin/", form)
    assert page.status == 403
    assert "CSRF" in page.body
    assert browser.cookie("sessionid") is None


def test_database_url_selects_postgresql(
    postgres_url: str,
    server_env: dict[str, str],
) -> None:
    user = new_credentials()
    postgres_env = {**server_env, "DATABASE_URL": postgres_url}
    create_superuser(postgres_env, user)
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute(
            "SELECT is_superuser, is_staff, email FROM auth_user WHERE username = %s", [user.username]
        ).fetchall()
    assert rows == [(True, True, user.email)]

    with start_server(PRODUCTION, postgres_env) as server:
        browser = AdminBrowser(server)
        assert_logged_in(browser.log_in(user), browser, user)

    # The same server with the session's default database (SQLite) has never heard of the user.
    assert server_env["DATABASE_URL"].startswith("sqlite:")
    with start_server(PRODUCTION, server_env) as server:
        browser = AdminBrowser(server)
        assert_refused(browser.log_in(user), browser)


@pytest.mark.parametrize(
    ("action", "settings"),
    [
        ("run", {"DJANGO_DEBUG": "1"}),  # manage.py runserver and push_data, as a developer runs them
        ("serve", {"WEB_CONCURRENCY": "2"}),  # two workers, one migration before them
    ],
)
def test_make_run_and_serve_migrate_a_new_database_first(
    action: str, settings: dict[str, str], server_env: dict[str, str], tmp_path: Path
) -> None:
    database = tmp_path / "new.sqlite3"
    env = {
        **server_env,
        **settings,
        "DATABASE_URL": f"sqlite:///{database}",
        "PORT": "0",
        "HOST": "127.0.0.1",
        "DJANGO_ENV_FILE": "",  # neither read nor write the checkout's .env.dev
        "DJANGO_STATIC_ROOT": str(tmp_path / "static"),  # serve collects into it
    }
    assert not database.exists()
    with start_server([sys.executable, "-m", "scripts.devenv", action], env) as server:
        if action == "serve":  # the supervisor binds the socket; the workers listen once they are up
            server.output.wait_for_count(r"Started server process \[\d+\]", 2, 30)
        user = new_credentials()
        create_superuser(env, user)
        browser = AdminBrowser(server)
        assert_logged_in(browser.log_in(user), browser, user)
        assert "Traceback" not in server.output.text()
