"""The production server: uvicorn (uvloop, httptools, websockets' sans-I/O protocol) with a graceful exit.

Why uvicorn and not daphne in production: the README's benchmarks. ``manage.py runserver`` stays
daphne for development; daphne, Twisted and autobahn are not even installed in the production image.
On SIGTERM or SIGINT a process stops accepting, closes every WebSocket with 1001 (going away) so that
pages reconnect, through the load balancer, to another replica, waits up to ``WS_SHUTDOWN_SECONDS``
for the close handshakes, and exits (``wsproject/uvicorn_ws.py``, in every worker).

    python -m wsproject.server [--host H] [--port P] [--workers N]

Settings come from the environment as for Django (README: Configuration). A configuration mistake, or
a uvicorn or websockets version other than the tested one, stops it with one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

import uvicorn

from echo import metrics
from wsproject import uvicorn_ws
from wsproject.cli import configuration_errors, fail, load_settings

PROGRAM = "wsproject.server"
APPLICATION = "wsproject.asgi:application"
# uvicorn imports the protocol class by this name in each worker: its supported extension point.
WS_PROTOCOL = "wsproject.uvicorn_ws:BoundedWebSocketProtocol"


def options(host: str, port: int, workers: int) -> dict[str, Any]:
    """uvicorn's settings (``uvicorn.Config``'s keyword arguments) for this server."""
    return {
        "host": host,
        "port": port,
        "workers": workers,
        "loop": "uvloop",
        "http": "httptools",
        "ws": WS_PROTOCOL,
        # Frames above this are refused with close code 1009 (message too big).
        "ws_max_size": int(os.environ.get("WS_MAX_FRAME_BYTES", str(64 * 1024))),
        # Pings find dead peers; pages also send a frame every second.
        "ws_ping_interval": 20.0,
        "ws_ping_timeout": 20.0,
        "ws_per_message_deflate": False,
        "proxy_headers": True,
        "forwarded_allow_ips": os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
        "access_log": False,
        "lifespan": "off",
        # Beyond WS_SHUTDOWN_SECONDS for the 1001 close handshakes: what is left after this is dropped.
        "timeout_graceful_shutdown": 5,
        "log_config": None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the production server.")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "1")))
    args = parser.parse_args()
    # Django configures logging in each worker when it loads the app; this covers the supervisor.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    load_settings(PROGRAM)
    if problem := uvicorn_ws.refusal():
        fail(PROGRAM, problem)
    metrics.share_between_workers(args.workers)
    # uvicorn.run() also swallows the KeyboardInterrupt it re-raises after a graceful Ctrl-C.
    with configuration_errors(PROGRAM):
        uvicorn.run(APPLICATION, **options(args.host, args.port, args.workers))


if __name__ == "__main__":
    main()
