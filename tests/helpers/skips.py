"""What a test needs from the machine: skip without it, except under ``CI=true``, where that fails.

CI must not pass by skipping: it installs Chromium, nginx, redis-server 7, docker-compose and Node
(``.ci/run``), so a missing one there is a failure with the reason.
"""

from __future__ import annotations

import functools
import os
from typing import NoReturn

import pytest

from scripts import redis_server


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the calling test with ``reason``; fail it instead under ``CI=true``."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI=true, so this fails instead of skipping", pytrace=False)
    pytest.skip(reason)


@functools.cache
def _redis_server_7() -> str | None:
    return redis_server.find_redis_server()  # looked for once per session


def require_redis_server() -> str:
    """The system redis-server 7+ the Sentinel and Cluster topologies run (sharded pub/sub needs 7)."""
    binary = _redis_server_7()
    if binary is None:
        skip_or_fail(redis_server.missing_redis_server() or "no redis-server 7 or newer")
    return binary
