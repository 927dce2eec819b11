"""Users for tests, made in the database a server uses, and the HTTP side of a browser that logs in.

Users are made by ``manage.py shell`` in a process of their own with the server's ``DATABASE_URL``,
so the same helper works on the session's SQLite file and on a PostgreSQL database.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import secrets
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.helpers.processes import ROOT, Server, timeout

CSRF_FIELD = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')

_MAKE_USERS = """
import json, os
from django.contrib.auth.models import Group, Permission, User
made = []
for spec in json.loads(os.environ["TEST_ACCOUNTS"]):
    user = User.objects.create_user(spec["username"], password=spec["password"])
    user.is_superuser = user.is_staff = spec["superuser"]
    user.save()
    for name in spec["perms"]:
        app_label, codename = name.split(".")
        permission = Permission.objects.get(content_type__app_label=app_label, codename=codename)
        user.user_permissions.add(permission)
    for name in spec["groups"]:
        user.groups.add(Group.objects.get_or_create(name=name)[0])
    made.append(user.pk)
print(json.dumps(made))
"""


@dataclass
class Account:
    username: str
    password: str
    superuser: bool = False
    perms: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    id: int = 0

    @property
    def topic(self) -> str:
        """The user's own topic under the default rules (``user-{user_id}``: owner)."""
        return f"user-{self.id}"


def new_account(**kwargs: Any) -> Account:
    """An account of this test's own (a unique name), not yet in any database."""
    return Account("u" + uuid.uuid4().hex[:10], secrets.token_urlsafe(12), **kwargs)


def create_accounts(*accounts: Account, env: dict[str, str] | None = None) -> None:
    """Make the users in the database of ``env`` (default: the test session's); fills in their ids."""
    specs = [
        {
            "username": a.username,
            "password": a.password,
            "superuser": a.superuser,
            "perms": a.perms,
            "groups": a.groups,
        }
        for a in accounts
    ]
    result = subprocess.run(  # noqa: PLW1510 - asserted below, with the output
        [sys.executable, "manage.py", "shell", "-c", _MAKE_USERS],
        cwd=ROOT,
        env={**(env or os.environ), "TEST_ACCOUNTS": json.dumps(specs)},
        capture_output=True,
        text=True,
        timeout=timeout(60),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for account, user_id in zip(accounts, json.loads(result.stdout.strip().splitlines()[-1]), strict=True):
        account.id = user_id


@dataclass
class Response:
    status: int
    path: str  # where redirects ended
    headers: dict[str, str]
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


class Browser:
    """What a browser does over HTTP for the page: keeps cookies, follows redirects, sends CSRF back."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    @property
    def origin(self) -> str:
        return f"http://{self.server.host}:{self.server.port}"

    def request(
        self,
        path: str,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        method: str | None = None,
    ) -> Response:
        all_headers = (
            {"Origin": self.origin, **(headers or {})} if data is not None or method else headers or {}
        )
        request = urllib.request.Request(
            self.server.http_url(path), data=data, headers=all_headers, method=method
        )
        try:
            with self.opener.open(request, timeout=timeout(10)) as response:
                return self._response(response, response.status)
        except urllib.error.HTTPError as error:
            return self._response(error, error.code)

    @staticmethod
    def _response(response: Any, status: int) -> Response:
        headers = {name.lower(): value for name, value in response.headers.items()}
        return Response(status, urllib.parse.urlsplit(response.url).path, headers, response.read().decode())

    def cookie(self, name: str) -> str | None:
        return next((cookie.value for cookie in self.cookies if cookie.name == name), None)

    @property
    def cookie_header(self) -> str:
        """The Cookie header a page's WebSocket handshake would carry."""
        return "; ".join(f"{cookie.name}={cookie.value}" for cookie in self.cookies)

    def log_in(self, account: Account) -> Response:
        """Open the login form and post it back with its CSRF token, as a person would."""
        form_page = self.request("/accounts/login/")
        assert form_page.status == 200, form_page
        token = CSRF_FIELD.search(form_page.body)
        assert token, "no CSRF token in the login form"
        form = {
            "csrfmiddlewaretoken": token.group(1),
            "username": account.username,
            "password": account.password,
        }
        return self.request("/accounts/login/", urllib.parse.urlencode(form).encode())

    def post_json(self, path: str, body: Any = None, *, csrf: bool = True, **headers: str) -> Response:
        """POST a JSON body (or none) with the page's CSRF header, as app.js does."""
        all_headers = {"Content-Type": "application/json", **headers}
        if csrf and self.cookie("csrftoken"):
            all_headers["X-CSRFToken"] = self.cookie("csrftoken") or ""
        data = b"" if body is None else json.dumps(body).encode()
        return self.request(path, data, all_headers, method="POST")

    def connection_token(self, topics: list[str] | None = None) -> dict[str, Any]:
        """POST /api/token as the logged-in page does; the answer's JSON."""
        response = self.post_json("/api/token", None if topics is None else {"topics": topics})
        assert response.status == 200, response
        return response.json()
