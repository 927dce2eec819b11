"""Per-connection and per-address limits that keep one client from hurting the others."""

from __future__ import annotations

import ipaddress
import time
from collections import Counter

from echo.conf import app_settings as settings
from echo.errors import CLOSE_POLICY_VIOLATION, CLOSE_TOO_BIG, ClientError
from echo.ops import metrics


class FrameRateLimit:
    """A token bucket for one connection's frames: ``rate`` per second, bursts up to ``burst``.

    A ``rate`` of 0 switches the limit off (benchmarks measure raw echo capacity that way).

    ``allow()`` says whether a frame may be handled; refused frames are "strikes", and more than
    ``max_strikes`` of them within ``window`` seconds is abuse: the connection is then closed.
    """

    def __init__(self, rate: float, burst: int, max_strikes: int, window: float = 10.0) -> None:
        self.rate = rate
        self.burst = burst
        self.max_strikes = max_strikes
        self.window = window
        self.tokens = float(burst)
        self.updated = time.monotonic()
        self.strikes = 0
        self.window_start = self.updated

    def allow(self) -> bool:
        if self.rate <= 0:
            return True  # limit switched off
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        if now - self.window_start > self.window:
            self.window_start, self.strikes = now, 0
        self.strikes += 1
        return False

    @property
    def abusive(self) -> bool:
        return self.strikes > self.max_strikes


def frame_bytes(frame: str | bytes, limit: int) -> int:
    """The size of ``frame`` on the wire (UTF-8 for text), as exactly as comparing it with ``limit``
    needs: a text is encoded only when its character count cannot tell (a character is 1 to 4 bytes)."""
    size = len(frame)
    if isinstance(frame, str) and size <= limit < size * 4:
        size = len(frame.encode("utf-8", "surrogatepass"))
    return size


class EchoLimit:
    """What one client may send to be echoed: frames of at most ``WS_MAX_FRAME_BYTES``, at most
    ``WS_RATE_LIMIT`` a second (``FrameRateLimit``). Made at the client's first frame: a connection
    that only listens never needs one."""

    __slots__ = ("rate",)

    def __init__(self) -> None:
        self.rate = FrameRateLimit(
            rate=settings.WS_RATE_LIMIT, burst=settings.WS_RATE_BURST, max_strikes=settings.WS_RATE_STRIKES
        )

    def allow(self, frame: str | bytes) -> bool:
        """True if ``frame`` may be echoed; False if it is dropped (and counted). Raises ``ClientError``
        for a frame too big (1009) or persistent flooding (1008)."""
        if frame_bytes(frame, settings.WS_MAX_FRAME_BYTES) > settings.WS_MAX_FRAME_BYTES:
            metrics.inc("ws_dropped_total", "too_big")
            limit = settings.WS_MAX_FRAME_BYTES
            raise ClientError("frame_too_big", f"frames are limited to {limit} bytes", CLOSE_TOO_BIG)
        if self.rate.allow():
            return True
        metrics.inc("ws_dropped_total", "rate_limit")
        if self.rate.abusive:
            limit = f"more than {settings.WS_RATE_LIMIT:g} frames/s, persistently"
            raise ClientError("rate_limited", limit, CLOSE_POLICY_VIOLATION)
        return False


class AddressCap:
    """Counts open connections per client address (in this process) against a cap.

    IPv6 clients are counted per /64 network, the block one subscriber usually gets, so that a host
    cannot dodge the cap by cycling through its own addresses. Loopback addresses are exempt: local
    tools and benchmarks (10,000 clients on 127.0.0.1) and a reverse proxy on the same host that does
    not forward the client's address all look like one.
    """

    def __init__(self) -> None:
        self.open: Counter[str] = Counter()

    def try_add(self, address: str | None, cap: int) -> str | None:
        """Count a new connection from ``address``; return the key it was counted under.

        Returns None when it is not counted: over ``cap`` (refuse it), or exempt (see ``exempt``).
        """
        key = counting_key(address)
        if key is None or cap <= 0 or self.open[key] >= cap:
            return None
        self.open[key] += 1
        return key

    def exempt(self, address: str | None, cap: int) -> bool:
        """True if connections from ``address`` are not capped at all."""
        return cap <= 0 or counting_key(address) is None

    def remove(self, key: str | None) -> None:
        """Forget one connection counted under ``key`` (what ``try_add`` returned)."""
        if key is not None and key in self.open:
            self.open[key] -= 1
            if self.open[key] <= 0:
                del self.open[key]


def counting_key(address: str | None) -> str | None:
    """What a client address is counted as: itself, its /64 for IPv6; None for loopback and unknown."""
    if address is None:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # a unix socket path or a proxy's label: counted as it is
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


per_address = AddressCap()
