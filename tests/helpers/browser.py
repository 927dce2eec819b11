"""Helpers for the browser tests: Debian's Chromium under Playwright, a restartable server, watchers.

Playwright drives the Chromium that ``apt-get install chromium`` puts at /usr/bin/chromium; it never
downloads a browser of its own. Without Chromium the browser tests skip, except under ``CI=true``,
where a missing browser is a failure: CI must not go green by testing nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.processes import ROOT, Server, spawn, start_server, stop, timeout
from tests.helpers.skips import skip_or_fail

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = ROOT / "test-artifacts"

# Runs in the page before its own scripts: records every WebSocket the page opens and every frame it
# sends, so tests can tell "sent nothing" from "sent something we did not see".
WEBSOCKET_SPY = """
(() => {
  const Native = window.WebSocket;
  const spy = { urls: [], sent: [] };
  const send = Native.prototype.send;
  Native.prototype.send = function (data) {
    spy.sent.push(String(data));
    return send.call(this, data);
  };
  window.WebSocket = class extends Native {
    constructor(url, protocols) {
      super(url, protocols);
      spy.urls.push(String(url));
    }
  };
  window.__ws = spy;
})();
"""

# What Chromium itself logs as an error while a server is down and the page retries: expected during
# a restart, and not something a page can prevent.
WEBSOCKET_FAILED = re.compile(r"^WebSocket connection to 'ws://[^']+/ws/echo/[^']*' failed")


def require_chromium() -> str:
    """The Chromium binary; skip the test without one, or fail it under CI=true."""
    if Path(CHROMIUM).exists() or shutil.which(CHROMIUM):
        return CHROMIUM
    reason = f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set CHROMIUM=/path/to/it)"
    skip_or_fail(reason)


def require_frontend() -> None:
    """Fail with the fix if the page's npm packages are missing (pytest run without `make test`)."""
    if not (ROOT / "node_modules" / "uplot" / "dist" / "uPlot.esm.js").exists():
        pytest.fail(
            "node_modules/uplot is missing: run `make test` (it runs npm ci), or npm ci", pytrace=False
        )


def ms(seconds: float) -> float:
    """A Playwright timeout (milliseconds) for ``seconds``, scaled by TEST_TIMEOUT_FACTOR."""
    return timeout(seconds) * 1000


@dataclass
class ConsoleWatcher:
    """Collects a page's console errors and uncaught exceptions; some messages can be allowed."""

    errors: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def attach(self, page: Any) -> None:
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))

    def _on_console(self, message: Any) -> None:
        if message.type != "error":
            return
        text = message.text
        url = (message.location or {}).get("url", "")
        if not any(pattern.search(text) or pattern.search(url) for pattern in self.allowed):
            self.errors.append(f"console error: {text} ({url})")

    def assert_clean(self) -> None:
        assert not self.errors, "\n".join(self.errors)


class RestartableServer:
    """``manage.py runserver`` that can be stopped and started again on the same port."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.server: Server | None = None
        self._stack = contextlib.ExitStack()

    def start(self, port: int = 0) -> Server:
        command = [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"]
        self.server = self._stack.enter_context(start_server(command, self.env))
        return self.server

    def stop(self) -> None:
        assert self.server is not None
        stop(self.server.process)

    def close(self) -> None:
        self._stack.close()


@contextlib.contextmanager
def restartable_server(env: dict[str, str]) -> Iterator[RestartableServer]:
    servers = RestartableServer(env)
    try:
        servers.start()
        yield servers
    finally:
        servers.close()


def push_data(env: dict[str, str], *args: str, seconds: float = 60) -> str:
    """Run ``manage.py push_data ARGS`` to the end; return its output, failing if it failed."""
    process = spawn([sys.executable, "manage.py", "push_data", *args], env)
    try:
        output, _ = process.communicate(timeout=timeout(seconds))
    finally:
        stop(process)
    assert process.returncode == 0, output
    return output
