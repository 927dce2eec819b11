"""Helpers for tests of the HTTP publish API: keys made with the real command, requests over a socket."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tests.helpers.processes import ROOT, Server, timeout


def unique_name() -> str:
    """A key name of this test's own (the tests share one database)."""
    return "k-" + uuid.uuid4().hex[:12]


def api_key(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``manage.py api_key ARGS`` as a process in the test session's environment (its database)."""
    return subprocess.run(  # noqa: PLW1510 - callers assert the exit code
        [sys.executable, "manage.py", "api_key", *args],
        cwd=ROOT,
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout(30),
    )


def create_key(publish: str = "*", name: str | None = None, read: str = "") -> str:
    """Make a key with ``manage.py api_key create`` and return it (the last line of its output).

    It publishes to ``publish`` (every topic unless told) and reads ``read`` (nothing unless told).
    """
    arguments = ["create", name or unique_name()]
    arguments += ["--publish", publish] if publish else []
    arguments += ["--read", read] if read else []
    result = api_key(*arguments)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[-1]


@dataclass
class Answer:
    """An HTTP answer: status, headers (lower-case names) and the body, parsed if it is JSON."""

    status: int
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        assert self.headers.get("content-type") == "application/json", (self.status, self.headers, self.raw)
        return json.loads(self.raw)

    def error(self) -> tuple[int, str]:
        """``(status, code)`` of a refusal, checking that its body is the API's error object."""
        body = self.json
        assert set(body) == {"error", "detail"} and body["detail"] and "\n" not in body["detail"], body
        return self.status, body["error"]


def request(
    server: Server,
    path: str,
    body: bytes | str | Any = b"",
    *,
    key: str | None = None,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    chunks: Iterable[bytes] | None = None,
) -> Answer:
    """Send one request on a fresh connection: ``body`` as is if bytes or text, else as JSON.

    With ``chunks`` the body is sent with chunked transfer encoding: no Content-Length.
    """
    if not isinstance(body, bytes | str):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    sent = dict(headers or {})
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    connection = http.client.HTTPConnection(server.host, server.port, timeout=timeout(15))
    try:
        if chunks is not None:
            sent["Transfer-Encoding"] = "chunked"
            connection.request(method, path, body=iter(chunks), headers=sent, encode_chunked=True)
        else:
            connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        return Answer(
            response.status, {name.lower(): value for name, value in response.getheaders()}, response.read()
        )
    finally:
        connection.close()


def publish(server: Server, topic: str, values: Any, key: str) -> Answer:
    return request(server, f"/api/publish/{topic}", values, key=key)


def publish_batch(server: Server, messages: Any, key: str) -> Answer:
    return request(server, "/api/publish", {"messages": messages}, key=key)
