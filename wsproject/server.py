"""The production server: uvicorn (uvloop, httptools, websockets' sans-I/O protocol) with a graceful exit.

Why uvicorn and not daphne in production: docs/benchmarks.md. ``manage.py runserver`` stays
daphne for development; daphne, Twisted and autobahn are not even installed in the production image.
On SIGTERM or SIGINT a process stops accepting, closes every WebSocket with 1001 (going away) so that
pages reconnect, through the load balancer, to another replica, waits up to ``WS_SHUTDOWN_SECONDS``
for the close handshakes, and exits (``wsproject/uvicorn_ws.py``, in every worker).

    python -m wsproject.server [--host H] [--port P] [--workers N|auto]

Settings come from the environment as for Django (docs/operations.md: Configuration). A configuration
mistake, or a version other than the tested one of a package whose internals we rely on, stops it with
one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from pathlib import Path
from typing import Any

import uvicorn

from echo.conf import app_settings
from echo.ops import metrics
from wsproject import uvicorn_ws, versions
from wsproject.cli import configuration_errors, fail, load_settings

PROGRAM = "wsproject.server"
# WEB_CONCURRENCY=auto (what `make serve` and compose ask for): one worker per CPU this process may run
# on, at most this many. Past a few workers per machine, more replicas serve better: each worker holds
# its own Redis connections, decodes every message of its topics once and costs tens of MB before its
# first client, and uvicorn's workers race to accept() on one socket (the split is uneven), where nginx's
# least_conn balances replicas by open connections and each replica restarts on its own.
MAX_AUTO_WORKERS = 4
# uvicorn calls it in each worker (its "factory"): wsproject.asgi's application behind the proxies' headers.
APPLICATION = "wsproject.server:application"
# uvicorn imports the protocol class by this name in each worker: its supported extension point.
WS_PROTOCOL = "wsproject.uvicorn_ws:BoundedWebSocketProtocol"
HTTP_PROTOCOL = "wsproject.uvicorn_ws:BoundedHttpProtocol"


def options(host: str, port: int, workers: int) -> dict[str, Any]:
    """uvicorn's settings (``uvicorn.Config``'s keyword arguments) for this server."""
    return {
        "host": host,
        "port": port,
        "workers": workers,
        "loop": "uvloop",
        "http": HTTP_PROTOCOL,  # httptools' parser, with a deadline for headers
        "ws": WS_PROTOCOL,
        # Frames above this are refused with close code 1009 (message too big).
        "ws_max_size": app_settings.WS_MAX_FRAME_BYTES,
        # Pings find dead peers; pages also send a frame every second.
        "ws_ping_interval": 20.0,
        "ws_ping_timeout": 20.0,
        "ws_per_message_deflate": False,
        "factory": True,
        # Read by the application's own FlatProxyHeadersMiddleware instead (application()).
        "proxy_headers": False,
        "access_log": False,
        "lifespan": "off",
        # Beyond WS_SHUTDOWN_SECONDS for the 1001 close handshakes: what is left after this is dropped.
        "timeout_graceful_shutdown": 5,
        "log_config": None,
    }


def application() -> Any:
    """What each worker serves: the project's ASGI application behind the client address and scheme
    that the proxies in ``FORWARDED_ALLOW_IPS`` (default 127.0.0.1, as uvicorn's) forward."""
    from wsproject.asgi import application as project  # sets Django up: in the worker, when uvicorn asks

    trusted = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
    return uvicorn_ws.FlatProxyHeadersMiddleware(project, trusted_hosts=trusted)


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, lowered by a cgroup v2 CPU quota (docker --cpus)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota: the affinity mask is all there is
    return max(1, cpus)


def worker_count(value: str) -> int:
    """``--workers`` / ``WEB_CONCURRENCY``: a positive number, or ``auto`` (``available_cpus()``, capped)."""
    if value.strip().lower() == "auto":
        return min(available_cpus(), MAX_AUTO_WORKERS)
    count = int(value)
    if count < 1:
        raise ValueError(value)
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the production server.")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    # One process unless asked: tests and one-process-per-container deployments rely on it.
    parser.add_argument(
        "--workers",
        type=worker_count,
        default=os.environ.get("WEB_CONCURRENCY", "1"),
        help=f"processes, or auto: one per available CPU, at most {MAX_AUTO_WORKERS} "
        "(default: WEB_CONCURRENCY, else 1)",
    )
    args = parser.parse_args()
    # Django configures logging in each worker when it loads the app; this covers the supervisor.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    load_settings(PROGRAM)
    if problem := uvicorn_ws.refusal() or versions.app_refusal():
        fail(PROGRAM, problem)
    metrics.share_between_workers(args.workers)
    # uvicorn.run() also swallows the KeyboardInterrupt it re-raises after a graceful Ctrl-C.
    with configuration_errors(PROGRAM):
        uvicorn.run(APPLICATION, **options(args.host, args.port, args.workers))


if __name__ == "__main__":
    main()
