"""The test app's per-object access rules, as an app would write them for ``call:`` rules."""

from __future__ import annotations

from typing import Any

from tests.testapp.models import Order


def can_read_order(user: Any, order_id: str) -> bool:
    """``order-{order_id}``: only the order's owner (sync, with the ORM: run off the event loop)."""
    return Order.objects.filter(pk=order_id, owner=user).exists()


async def can_read_order_async(user: Any, order_id: str) -> bool:
    """The same decision as a coroutine."""
    return await Order.objects.filter(pk=order_id, owner=user).aexists()


def broken(user: Any, order_id: str) -> bool:
    """A rule with a bug: it raises, and access is refused."""
    raise RuntimeError("the shop's database is down")
