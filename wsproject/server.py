"""The production server: uvicorn (uvloop, httptools, websockets' sans-I/O protocol) with a graceful exit.

Why uvicorn and not daphne in production: the README's benchmarks. ``manage.py runserver`` stays
daphne for development. On SIGTERM or SIGINT a process stops accepting, closes every WebSocket with
1001 (going away) so that pages reconnect, through the load balancer, to another replica, waits up
to ``WS_SHUTDOWN_SECONDS`` for the close handshakes, and exits.

    python -m wsproject.server [--host H] [--port P] [--workers N]

Settings come from the environment as for Django (README: Configuration).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket

import uvicorn

from echo import connections


class GracefulServer(uvicorn.Server):
    """uvicorn's server, closing WebSockets with 1001 before its own shutdown (which would use 1012)."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        left = await connections.close_all(grace=float(os.environ.get("WS_SHUTDOWN_SECONDS", "3")))
        if left:
            uvicorn.config.logger.warning("%d WebSocket connections did not close in time", left)
        await super().shutdown(sockets)


def config(host: str, port: int, workers: int) -> uvicorn.Config:
    forwarded = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
    return uvicorn.Config(
        "wsproject.asgi:application",
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        # Frames above this are refused with close code 1009 (message too big).
        ws_max_size=int(os.environ.get("WS_MAX_FRAME_BYTES", str(64 * 1024))),
        # Pings find dead peers; pages also send a frame every second.
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        ws_per_message_deflate=False,
        proxy_headers=True,
        forwarded_allow_ips=forwarded,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
        log_config=None,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the production server.")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "1")))
    args = parser.parse_args()
    cfg = config(args.host, args.port, args.workers)
    server = GracefulServer(cfg)
    # uvicorn re-raises Ctrl-C's SIGINT once it has shut down gracefully: no traceback for that.
    with contextlib.suppress(KeyboardInterrupt):
        if cfg.workers > 1:
            sock = cfg.bind_socket()
            uvicorn.supervisors.Multiprocess(cfg, target=server.run, sockets=[sock]).run()
        else:
            server.run()


if __name__ == "__main__":
    main()
