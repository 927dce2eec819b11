"""Per-connection and per-address limits, without a server."""

from __future__ import annotations

import pytest

from echo.ws.limits import AddressCap, counting_key


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("198.51.100.7", "198.51.100.7"),
        ("2001:db8:0:7::1", "2001:db8:0:7::/64"),
        ("2001:db8:0:7:ffff:ffff:ffff:ffff", "2001:db8:0:7::/64"),
        ("::ffff:198.51.100.7", "198.51.100.7"),  # an IPv4 client on a dual-stack socket
        ("127.0.0.5", None),
        ("::1", None),
        (None, None),
    ],
)
def test_what_an_address_is_counted_as(address: str | None, key: str | None) -> None:
    assert counting_key(address) == key


def test_the_cap_counts_per_key_and_lets_clients_back_in_when_one_leaves() -> None:
    cap = AddressCap()
    first, second = cap.try_add("2001:db8::1", 2), cap.try_add("2001:db8::2", 2)
    assert first == second == "2001:db8::/64"
    assert cap.try_add("2001:db8::3", 2) is None and not cap.exempt("2001:db8::3", 2)
    assert cap.try_add("2001:db8:0:1::1", 2) == "2001:db8:0:1::/64"
    cap.remove(first)
    assert cap.try_add("2001:db8::3", 2) == "2001:db8::/64"


def test_loopback_and_a_switched_off_cap_are_exempt() -> None:
    cap = AddressCap()
    assert cap.try_add("127.0.0.1", 1) is None and cap.exempt("127.0.0.1", 1)
    assert cap.try_add("198.51.100.7", 0) is None and cap.exempt("198.51.100.7", 0)
    assert cap.open == {}
