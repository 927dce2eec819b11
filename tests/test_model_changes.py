"""Model changes, live: ``publish_changes`` with a real model (tests/testapp's Order) in the test
session's SQLite database, received by a client of the real ASGI application over the real Redis.

The ORM runs in a worker thread (``sync_to_async``), as a Django view's would; ``publish()`` in the
commit hook hands the message to its own background loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.core.exceptions import FieldDoesNotExist
from django.db import transaction
from django.test import override_settings

from echo.protocol import FrameError
from echo.publishing.model_changes import ModelChanges, publish_changes
from tests.helpers.clients import data_frames
from tests.helpers.processes import timeout
from tests.testapp.models import Order
from wsproject.asgi import application

ORIGIN = [(b"origin", b"http://localhost:8000")]


class Rollback(Exception):
    """Raised inside a transaction to roll it back."""


@pytest.fixture
def owner() -> object:
    return get_user_model().objects.create_user("buyer-" + uuid.uuid4().hex[:10])


@pytest.fixture
def changes(topic: str) -> Iterator[ModelChanges]:
    handle = publish_changes(Order, topic=topic, fields=["owner", "item", "status"])
    yield handle
    handle.disconnect()


@pytest.fixture
async def client(topic: str) -> AsyncIterator[WebsocketCommunicator]:
    communicator = WebsocketCommunicator(application, f"/ws/echo/?topics={topic}&history=0", headers=ORIGIN)
    connected, _ = await communicator.connect()
    assert connected
    yield communicator
    await communicator.disconnect()


async def events(communicator: WebsocketCommunicator, count: int) -> list[dict]:
    """The next ``count`` data frames; one text frame may carry several, presence frames are skipped."""
    got: list[dict] = []
    while len(got) < count:
        output = await communicator.receive_output(timeout=timeout(5))
        got += [f for f in data_frames(output["text"]) if f["type"] == "data"]
    assert len(got) == count, got
    return got


async def nothing_more(communicator: WebsocketCommunicator) -> bool:
    """True if no data frame arrives within half a second (presence frames may)."""
    while not await communicator.receive_nothing(timeout=timeout(0.5)):
        output = await communicator.receive_output()
        if any(f["type"] == "data" for f in data_frames(output["text"])):
            return False
    return True


@sync_to_async
def create(owner: object, item: str) -> Order:
    return Order.objects.create(owner=owner, item=item)


async def test_saves_and_deletes_reach_a_client_as_created_updated_deleted(
    changes: ModelChanges, client: WebsocketCommunicator, owner: object
) -> None:
    order = await create(owner, "tea")
    order.status = "paid"
    await sync_to_async(order.save)()
    pk = order.pk
    await sync_to_async(order.delete)()
    frames = await events(client, 3)
    assert [(f["event"], f["data"]) for f in frames] == [
        ("created", {"pk": pk, "owner": owner.pk, "item": "tea", "status": "new"}),
        ("updated", {"pk": pk, "owner": owner.pk, "item": "tea", "status": "paid"}),
        ("deleted", {"pk": pk, "owner": owner.pk, "item": "tea", "status": "paid"}),
    ]
    assert [f["seq"] for f in frames] == [1, 2, 3]


async def test_a_change_is_published_when_its_transaction_commits_and_never_if_it_rolls_back(
    changes: ModelChanges, client: WebsocketCommunicator, owner: object
) -> None:
    saved, commit = threading.Event(), threading.Event()

    def open_transaction() -> int:
        with transaction.atomic():
            order = Order.objects.create(owner=owner, item="held")
            saved.set()
            assert commit.wait(timeout(10))
        return order.pk

    committing = asyncio.ensure_future(sync_to_async(open_transaction, thread_sensitive=False)())
    assert await asyncio.to_thread(saved.wait, timeout(10))
    assert await nothing_more(client)  # saved, not committed: nothing yet
    commit.set()
    pk = await committing
    (frame,) = await events(client, 1)
    assert (frame["event"], frame["data"]["pk"]) == ("created", pk)

    def rolled_back() -> None:
        with pytest.raises(Rollback), transaction.atomic():
            Order.objects.create(owner=owner, item="never")
            raise Rollback

    def savepoint_rolled_back() -> int:
        with transaction.atomic():
            kept = Order.objects.create(owner=owner, item="kept")
            with pytest.raises(Rollback), transaction.atomic():
                Order.objects.filter(pk=kept.pk).update(status="ignored")  # update() sends no signal
                Order.objects.create(owner=owner, item="savepoint")
                raise Rollback
        return kept.pk

    await sync_to_async(rolled_back)()
    kept = await sync_to_async(savepoint_rolled_back)()
    (frame,) = await events(client, 1)
    assert (frame["event"], frame["data"]["item"], frame["data"]["pk"], frame["seq"]) == (
        "created",
        "kept",
        kept,
        2,
    )
    assert await nothing_more(client)


async def test_a_topic_per_object_and_prefixed_event_names(owner: object) -> None:
    order = await create(owner, "first")
    per_order = f"order-{uuid.uuid4().hex[:8]}-{order.pk}"

    def topic_of(changed: Order) -> str:
        return per_order if changed.pk == order.pk else "orders-elsewhere"

    handle = publish_changes(Order, topic=topic_of, fields=["status"], event="order")
    mine = WebsocketCommunicator(application, f"/ws/echo/?topics={per_order}&history=0", headers=ORIGIN)
    try:
        assert (await mine.connect())[0]
        await create(owner, "another order")  # to its own topic, not this one
        order.status = "shipped"
        await sync_to_async(order.save)()
        (frame,) = await events(mine, 1)
        assert (frame["topic"], frame["seq"], frame["event"], frame["data"]) == (
            per_order,
            1,
            "order.updated",
            {"pk": order.pk, "status": "shipped"},
        )
        await mine.disconnect()
    finally:
        handle.disconnect()


def test_bad_names_are_refused_when_connected_not_when_saving() -> None:
    with pytest.raises(FieldDoesNotExist):
        publish_changes(Order, topic="orders", fields=["price"])
    with pytest.raises(FrameError, match="invalid topic"):
        publish_changes(Order, topic="Orders!", fields=["item"])
    with pytest.raises(FrameError, match="invalid event name"):
        publish_changes(Order, topic="orders", fields=["item"], event="bad name")


async def test_a_failed_publish_is_logged_and_the_commit_stands(
    changes: ModelChanges, client: WebsocketCommunicator, owner: object, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        override_settings(MESSAGE_MAX_BYTES=64),
        caplog.at_level(logging.ERROR, "echo.publishing.model_changes"),
    ):
        order = await create(owner, "x" * 100)  # its data is over 64 bytes: publish() raises FrameError
    assert await sync_to_async(Order.objects.filter(pk=order.pk).exists)()
    (record,) = [r for r in caplog.records if r.name == "echo.publishing.model_changes"]
    assert f"testapp.Order pk={order.pk}: the 'created' event was not published" in record.getMessage()
    assert record.exc_info and "over the limit of 64" in str(record.exc_info[1])
    assert await nothing_more(client)
