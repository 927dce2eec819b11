"""A Python asyncio client for live topics: every frame once, in order, across reconnects.

From a shell, one JSON line per message on stdout (data, reset, presence, warning, error), what the
client does (connecting, reconnecting) on stderr::

    python -m echo.client ws://127.0.0.1:8000/ws/echo/ --topics prices,sensor-7 --history 10

As a library (tests, the bench, a program of yours)::

    async with LiveClient("ws://127.0.0.1:8000/ws/echo/", ["prices"]) as client:
        async for frame in client:
            print(frame["topic"], frame["seq"], frame.get("values"))

It follows the client's rules of docs/protocol.md: it keeps each topic's position (epoch, seq) and
resumes with ``since`` after a drop (backoff 0.5 s doubling to 10 s, halved at random), drops a data
frame it already has, and passes a ``reset`` on (or makes one, for data of an epoch no reset
announced). It needs only the ``websockets`` library and ``echo.protocol``, never Django.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Self, TypeGuard

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Origin, Subprotocol

from echo.protocol import DEFAULT_TOPIC, EPOCH_PATTERN, TOPIC_PATTERN, Position

logger = logging.getLogger("echo.client")

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0
STABLE_AFTER = 10.0  # seconds open after which the next drop starts the backoff afresh
CLOSE_UNAUTHORIZED = 3000  # the connection token expired or was refused
NO_RETRY_CODES = frozenset({1008, 3003})  # the request itself was refused: asking again would be too
TOKEN_RENEW_MARGIN = 5.0  # seconds: a token this close to its expiry is not reused
MAX_MESSAGE_BYTES = 16 * 2**20  # a replay of long histories comes batched in large text frames

Frame = dict[str, Any]
# Called before each socket opens, ``fresh`` being true when the server said the last token expired.
TokenSource = Callable[[bool], Awaitable[str | None]]


class Refused(Exception):
    """Raised by the frame iterator when the server refused the request: asking again would be refused
    too (1008 a bad request, 3003 forbidden, 3000 with no way to renew the token, an HTTP 4xx
    handshake such as a refused origin)."""

    def __init__(self, code: int | None, detail: str) -> None:
        super().__init__(f"refused ({code or 'handshake'}): {detail}")
        self.code = code
        self.detail = detail


def backoff_delay(attempt: int, rng: random.Random | None = None) -> float:
    """Seconds before reconnect attempt ``attempt`` (0, 1, ...): the page's equal-jitter backoff."""
    ceiling = min(BACKOFF_MAX, BACKOFF_FIRST * 2**attempt)
    return ceiling / 2 + (rng or random).random() * ceiling / 2


def token_from_api_key(url: str, api_key: str) -> TokenSource:
    """A token source that asks the server's ``/api/token`` with an API key (``Authorization: Bearer``),
    reusing each token until it nears its expiry; ``url`` is the socket's or any URL on that server."""
    parts = urllib.parse.urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    endpoint = urllib.parse.urlunsplit((scheme, parts.netloc, "/api/token", "", ""))
    cached: dict[str, Any] = {}

    def fetch() -> dict[str, Any]:
        request = urllib.request.Request(  # noqa: S310 - the scheme is http(s), from the socket's URL
            endpoint, data=b"", method="POST", headers={"Authorization": f"Bearer {api_key}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            body: dict[str, Any] = json.load(response)
            return body

    async def token(fresh: bool) -> str:
        if fresh or not cached or cached["expires"] - time.time() < TOKEN_RENEW_MARGIN:
            cached.update(await asyncio.to_thread(fetch))
        return str(cached["token"])

    return token


@dataclass
class _SocketEnd:
    """How one socket ended: when it opened (None: never) and the close code it got."""

    opened_at: float | None = None
    code: int | None = None


class LiveClient:
    """One logical connection to ``topics`` that survives its sockets; iterate it for frames.

    Iterating yields each server frame as a dict: ``data`` frames once each and in order per topic
    (duplicates dropped), ``reset`` (forget the topic; the frames that follow belong to its
    ``epoch``), ``presence``, ``warning`` and ``error``. It reconnects by itself after any drop,
    resuming with ``since``; it raises ``Refused`` when the server refused the request. Frames are read
    as the iteration asks for them: a slow consumer is backpressure on the socket (the server drops a
    client too far behind with 1013, and the client then resumes from history).
    """

    def __init__(
        self,
        url: str,
        topics: Iterable[str] = (DEFAULT_TOPIC,),
        *,
        history: int | None = None,
        max_rate: float | None = None,
        token: str | TokenSource | None = None,
        positions: dict[str, Position] | None = None,
        origin: str | None = None,
        ping_interval: float = 10.0,
    ) -> None:
        self.url = url
        self.topics = list(topics)
        for topic in self.topics:
            if not TOPIC_PATTERN.fullmatch(topic):
                raise ValueError(f"invalid topic {topic!r}: 1-48 of a-z, 0-9, '_' and '-'")
        self.history = history
        self.max_rate = max_rate
        self.token = token
        self.origin = origin
        self.ping_interval = ping_interval
        # Where each topic stands: seq 0 means "nothing seen in this epoch yet" (seqs start at 1).
        self.positions: dict[str, Position] = dict(positions or {})
        self.connections = 0  # sockets opened so far
        self.state = "closed"  # "connecting" | "open" | "reconnecting" | "closed"
        self._socket: ClientConnection | None = None
        self._iterations: list[AsyncGenerator[Frame]] = []
        self._closing = asyncio.Event()
        self._token_expired = False
        self._last_error = ""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """End the iteration (from another task, or when done): close the socket, reconnect no more."""
        self._closing.set()
        if self._socket is not None:
            await self._socket.close()
        # An iteration left by a `break` waits inside its socket's context: end it now, not at garbage
        # collection. (One still running, in another task, ends by itself now that the socket closed.)
        for iteration in self._iterations:
            if not getattr(iteration, "ag_running", False):
                await iteration.aclose()
        self._iterations.clear()

    def socket_url(self) -> str:
        """The URL of the next socket: the topics, ``history``, ``max_rate`` and ``since`` for each topic
        whose position is known."""
        parts = urllib.parse.urlsplit(self.url)
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        query = [("topics", ",".join(self.topics))]
        if self.history is not None:
            query.append(("history", str(self.history)))
        if self.max_rate:
            query.append(("max_rate", f"{self.max_rate:g}"))
        since = [f"{t}:{p.seq}:{p.epoch}" for t in self.topics if _resumable(p := self.positions.get(t))]
        if since:
            query.append(("since", ",".join(since)))
        encoded = urllib.parse.urlencode(query, safe=",:")
        return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path or "/ws/echo/", encoded, ""))

    def __aiter__(self) -> AsyncIterator[Frame]:
        iteration = self.frames()
        self._iterations.append(iteration)
        return iteration

    async def frames(self) -> AsyncGenerator[Frame]:
        """The frames, across reconnects, until close() (or a refusal, raised as ``Refused``)."""
        attempt = 0
        while not self._closing.is_set():
            ended = _SocketEnd()
            async with contextlib.aclosing(self._socket_frames(ended)) as frames:
                async for frame in frames:
                    yield frame
            if self._closing.is_set():
                break
            if ended.opened_at is not None and time.monotonic() - ended.opened_at > STABLE_AFTER:
                attempt = 0
            if ended.code in NO_RETRY_CODES:
                raise Refused(ended.code, self._last_error or "the request was refused")
            if ended.code == CLOSE_UNAUTHORIZED:
                if not callable(self.token):
                    raise Refused(ended.code, self._last_error or "the connection token is no longer valid")
                self._token_expired = True
            await self._wait(backoff_delay(attempt))
            attempt += 1
        self.state = "closed"

    async def _socket_frames(self, ended: _SocketEnd) -> AsyncGenerator[Frame]:
        """The frames of one socket, until it closes; how it ended goes into ``ended``."""
        try:
            self.state = "connecting"
            protocols = await self._subprotocols()
            url = self.socket_url()
            logger.info("connecting to %s", url)
            async with connect(
                url,
                subprotocols=protocols,
                origin=Origin(self.origin) if self.origin else None,
                ping_interval=self.ping_interval,
                ping_timeout=self.ping_interval,
                max_size=MAX_MESSAGE_BYTES,
            ) as socket:
                self._socket, ended.opened_at = socket, time.monotonic()
                self.connections += 1
                self.state = "open"
                self._last_error = ""
                with contextlib.suppress(ConnectionClosed):
                    async for message in socket:
                        if isinstance(message, str):
                            for frame in self._accept(message):
                                yield frame
                ended.code = socket.close_code
                logger.info("closed with code %s", ended.code)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if 400 <= status < 500 and status != 429:
                raise Refused(None, f"HTTP {status} at the handshake") from exc
            logger.info("handshake answered HTTP %s", status)
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            logger.info("cannot connect: %s", exc or type(exc).__name__)
        finally:
            self._socket = None

    async def _wait(self, seconds: float) -> None:
        """Sleep before a reconnect, waking at once if close() is called."""
        self.state = "reconnecting"
        logger.info("reconnecting in %.1f s", seconds)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    async def _subprotocols(self) -> Sequence[Subprotocol] | None:
        """The connection token's subprotocols for the next socket, or None for none."""
        token = self.token
        if callable(token):
            token = await token(self._token_expired)
            self._token_expired = False
        if not token:
            return None
        return [Subprotocol("echo.v1"), Subprotocol(f"echo.token.{token}")]

    def _accept(self, message: str) -> list[Frame]:
        """The frames of one text message worth passing on; echoes and duplicates are left out."""
        frames: list[Frame] = []
        for line in message.split("\n"):
            try:
                frame = json.loads(line) if line.startswith("{") else None
            except ValueError:
                frame = None  # an echo that is not JSON
            if not isinstance(frame, dict):
                continue
            kind = frame.get("type")
            if kind == "data":
                frames.extend(self._track(frame))
            elif kind == "reset":
                frames.append(self._reset(frame))
            elif kind in ("presence", "warning", "error"):
                if kind == "error":
                    self._last_error = f"{frame.get('code')}: {frame.get('detail', '')}"
                frames.append(frame)
        return frames

    def _reset(self, frame: Frame) -> Frame:
        """Forget a topic's position, taking the epoch of the frames that follow."""
        topic, epoch = frame.get("topic"), frame.get("epoch")
        if isinstance(topic, str):
            self.positions[topic] = Position(epoch if isinstance(epoch, str) else None, 0)
        return frame

    def _track(self, frame: Frame) -> list[Frame]:
        """The data frame (after a reset made for it, if its epoch is unannounced), or nothing if it is
        one we have: within an epoch a seq at or below the last one seen is a duplicate."""
        topic, seq, epoch = frame.get("topic"), frame.get("seq"), frame.get("epoch")
        if not isinstance(topic, str) or not isinstance(seq, int):
            return [frame]
        epoch = epoch if isinstance(epoch, str) else None
        out: list[Frame] = []
        known = self.positions.get(topic)
        if known is not None and (known.epoch is not None or known.seq) and known.epoch != epoch:
            reason = f"data of epoch {epoch} without a reset (had {known.epoch})"
            out.append(self._reset({"type": "reset", "topic": topic, "epoch": epoch, "reason": reason}))
            known = self.positions[topic]
        if known is not None and seq <= known.seq:
            return out
        if known is not None and known.seq and seq > known.seq + 1 and not self.max_rate:
            logger.warning("gap in %s: %d frame(s) missed before #%d", topic, seq - known.seq - 1, seq)
        self.positions[topic] = Position(epoch, seq)
        return [*out, frame]


def _resumable(position: Position | None) -> TypeGuard[Position]:
    """Whether ``since`` can name this position: a frame seen, in an epoch of the protocol's alphabet."""
    return (
        position is not None
        and position.seq > 0
        and position.epoch is not None
        and EPOCH_PATTERN.fullmatch(position.epoch) is not None
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of ``python -m echo.client``."""
    parser = argparse.ArgumentParser(
        prog="python -m echo.client",
        description="Print a server's live frames, one JSON line each, resuming after every drop.",
    )
    parser.add_argument("url", help="the socket, e.g. ws://127.0.0.1:8000/ws/echo/ (http(s): works too)")
    parser.add_argument("--topics", default=DEFAULT_TOPIC, help="comma-separated topics (default: prices)")
    parser.add_argument("--history", type=int, help="frames per topic replayed on connect")
    parser.add_argument("--max-rate", type=float, help="at most this many live frames/s per topic")
    credentials = parser.add_mutually_exclusive_group()
    credentials.add_argument("--token", help="a connection token (from POST /api/token)")
    credentials.add_argument("--api-key", help="an API key with a read grant: tokens are fetched and renewed")
    parser.add_argument("--count", type=int, help="exit after this many data frames")
    parser.add_argument("-v", "--verbose", action="store_true", help="say on stderr what the client does")
    args = parser.parse_args(argv)
    args.topics = [topic.strip() for topic in args.topics.split(",") if topic.strip()]
    if bad := [topic for topic in args.topics if not TOPIC_PATTERN.fullmatch(topic)]:
        parser.error(f"invalid topic {bad[0]!r}: 1-48 of a-z, 0-9, '_' and '-'")
    return args


async def run(args: argparse.Namespace) -> int:
    """Print frames until ``--count`` data frames, Ctrl-C, or a refusal (exit status 1)."""
    token: str | TokenSource | None = args.token
    if args.api_key:
        token = token_from_api_key(args.url, args.api_key)
    seen = 0
    try:
        async with LiveClient(
            args.url, args.topics, history=args.history, max_rate=args.max_rate, token=token
        ) as client:
            async for frame in client:
                sys.stdout.write(json.dumps(frame, ensure_ascii=False, separators=(",", ":")) + "\n")
                sys.stdout.flush()
                seen += frame["type"] == "data"
                if args.count is not None and seen >= args.count:
                    break
    except Refused as exc:
        print(f"echo.client: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command's entry point: parse the arguments, then run one coroutine."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="echo.client: %(message)s",
        stream=sys.stderr,
    )
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
