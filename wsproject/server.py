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
import asyncio
import contextlib
import logging
import os
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.supervisors import multiprocess
from websockets.exceptions import InvalidState
from websockets.http11 import Request
from websockets.protocol import State

from echo import connections, metrics
from echo.connections import DIRECT_SEND_TEXT
from wsproject.primitives import Flag, ReceiveQueue

logger = logging.getLogger(__name__)

# How long a stalled client's close frame may wait to be read before the connection is aborted.
STALLED_CLOSE_SECONDS = 2.0


class BoundedWebSocketProtocol(WebSocketsSansIOProtocol):
    """websockets' sans-I/O protocol that drops a client which stopped reading its socket.

    While a client reads slowly, sends wait (uvicorn pauses writers above the transport's high-water
    mark), the consumer's channel queue fills, and the layer closes it with 1013. While the app is
    behind, reading pauses (uvicorn's own flow control), so what a client sends cannot pile up either.
    A client that stops reading altogether is closed with 1013 once its socket has stayed unwritable
    for ``WS_STALL_SECONDS`` (logged and counted), and aborted if it does not read that close frame.

    It also holds less per connection (15 KB in all instead of 26 KB; README: Performance), and offers
    the layer a synchronous send (``direct_send_text``). Both lean on uvicorn's internals, which is why
    uvicorn is pinned: the tests cover the behaviour on every run, the benchmark's memory figure shows
    whether an upgrade undid the savings.
    """

    stall_seconds = float(os.environ.get("WS_STALL_SECONDS", "10"))
    _stall_timer: asyncio.TimerHandle | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Lighter stand-ins for asyncio's Queue and Event: 3.7 KB less per connection.
        self.queue = ReceiveQueue()  # type: ignore[assignment]
        self.writable = Flag()  # type: ignore[assignment]
        self.writable.set()

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        extensions: dict[str, Any] = self.scope["extensions"]
        extensions[DIRECT_SEND_TEXT] = self.direct_send_text

    def start_keepalive(self) -> None:
        """Called once, when the handshake's response has been sent."""
        # The parsed request and response, headers and all, are not needed after this point, but
        # uvicorn keeps them for the connection's life, and so does websockets' parser (a local
        # variable of its generator): emptying the headers frees 3 KB per client.
        self.request.headers.clear()
        self.request = self.response = None  # type: ignore[assignment]
        super().start_keepalive()

    def direct_send_text(self, text: str) -> bool:
        """Write a text frame now if the connection is open and writable; else False (use send()).

        What ``send({"type": "websocket.send", "text": ...})`` does, without a coroutine, so that the
        channel layer can fan a message out to thousands of sockets in one synchronous loop.
        """
        if (
            self.disconnected
            or self.close_sent
            or not self.handshake_complete
            or self.initial_response is not None
            or not self.writable.is_set()
            or self.transport.is_closing()
        ):
            return False
        try:
            self.conn.send_text(text.encode())
        except InvalidState:
            return False
        self.transport.write(b"".join(self.conn.data_to_send()))
        return True

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall_timer is None:
            self._stall_timer = asyncio.get_running_loop().call_later(self.stall_seconds, self._drop)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_stall_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_stall_timer()
        super().connection_lost(exc)

    def _cancel_stall_timer(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def send_receive_event_to_app(self) -> None:
        """Pass a complete message to the app (and pause reading until it is taken, as uvicorn does).

        Invalid UTF-8 in a text message closes with 1007 and one plain log line; uvicorn's own
        version logs a traceback for what is a client's mistake. Everything else is uvicorn's.
        """
        if self.curr_msg_data_type == "text" and not self.close_sent:
            try:
                b"".join(self.frames).decode()
            except UnicodeDecodeError:
                self.frames = []
                metrics.inc("ws_dropped_total", "invalid_utf8")
                if self.conn.state is not State.OPEN:
                    return  # already closing: nothing more to say to this client
                logger.warning("Closing %s: invalid UTF-8 in a text frame (1007)", self.client)
                metrics.inc("ws_closed_total", "1007")
                self.conn.send_close(1007, "invalid UTF-8")
                self.handle_parser_exception()
                return
        super().send_receive_event_to_app()

    def _drop(self) -> None:
        """Called when the socket has been unwritable for ``stall_seconds``: close it with 1013.

        The close frame waits behind what the client has not read; if it does not read that either
        within ``STALLED_CLOSE_SECONDS``, the connection is aborted and its buffers freed.
        """
        self._stall_timer = None
        logger.warning(
            "Dropping %s: it has not read its socket for %.0f s (1013)", self.client, self.stall_seconds
        )
        metrics.inc("ws_dropped_total", "stalled_client")
        metrics.inc("ws_closed_total", "1013")
        if self.conn.state is State.OPEN:
            self.conn.send_close(1013, "stalled: not reading")
            self.handle_parser_exception()  # tells the app, writes the close frame, closes when written
        self.loop.call_later(STALLED_CLOSE_SECONDS, self.transport.abort)


class GracefulServer(uvicorn.Server):
    """uvicorn's server, closing WebSockets with 1001 before its own shutdown (which would use 1012)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if sockets:  # a worker sharing the supervisor's socket: uvicorn says nothing once it listens
            logger.info("Worker %d accepting connections", os.getpid())

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        left = await connections.close_all(grace=float(os.environ.get("WS_SHUTDOWN_SECONDS", "3")))
        if left:
            uvicorn.config.logger.warning("%d WebSocket connections did not close in time", left)
        await super().shutdown(sockets)


class GracefulWorker(multiprocess.Process):
    """One of uvicorn's worker processes, running a ``GracefulServer`` instead of its own server."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = GracefulServer(config=self.config)
        return self._server


def config(host: str, port: int, workers: int) -> uvicorn.Config:
    forwarded = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
    return uvicorn.Config(
        "wsproject.asgi:application",
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        ws=BoundedWebSocketProtocol,
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
    # Django configures logging in each worker when it loads the app; this covers the supervisor.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config(args.host, args.port, args.workers)
    metrics.share_between_workers(cfg.workers)
    server = GracefulServer(cfg)
    # uvicorn re-raises Ctrl-C's SIGINT once it has shut down gracefully: no traceback for that.
    with contextlib.suppress(KeyboardInterrupt):
        if cfg.workers > 1:
            # uvicorn's supervisor makes its workers by this name; they unpickle it from this module.
            multiprocess.Process = GracefulWorker  # type: ignore[misc]
            multiprocess.Multiprocess(cfg, sockets=[cfg.bind_socket()]).run()
        else:
            server.run()


if __name__ == "__main__":
    main()
