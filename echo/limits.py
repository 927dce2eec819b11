"""Per-connection and per-address limits that keep one client from hurting the others."""

from __future__ import annotations

import ipaddress
import time
from collections import Counter


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


class AddressCap:
    """Counts open connections per client address (in this process) against a cap.

    Loopback addresses are exempt: local tools and benchmarks (10,000 clients on 127.0.0.1) and a
    reverse proxy on the same host that does not forward the client's address all look like one.
    """

    def __init__(self) -> None:
        self.open: Counter[str] = Counter()

    def try_add(self, address: str | None, cap: int) -> bool:
        """Count a new connection from ``address``; False (and not counted) if it is over ``cap``."""
        if address is None or cap <= 0 or _is_loopback(address):
            return True
        if self.open[address] >= cap:
            return False
        self.open[address] += 1
        return True

    def remove(self, address: str | None) -> None:
        if address is not None and address in self.open:
            self.open[address] -= 1
            if self.open[address] <= 0:
                del self.open[address]


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


per_address = AddressCap()
