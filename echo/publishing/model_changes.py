"""Model changes, live: publish a model's saved and deleted rows as JSON events, after they commit.

``publish_changes(Order, topic="orders", fields=["status", "item"])``, called once (in an
``AppConfig.ready``), connects to the model's ``post_save`` and ``post_delete`` signals. Each save or
delete takes a snapshot of the named fields at once, and publishes it with ``transaction.on_commit``
when (and only if) the transaction that made it commits: a rolled-back row never reaches a browser.
Outside a transaction (autocommit) it is published at once.

The event is ``created``, ``updated`` or ``deleted`` (``<event>.created`` and so on with ``event=``);
its data is ``{"pk": ..., field: value, ...}``: a foreign key gives its id, dates and times ISO 8601
text, a Decimal or UUID text. Limits:
- ``QuerySet.update()``, ``bulk_create()`` and ``bulk_update()`` send no signals and publish nothing;
- the publish blocks the committing thread until Redis has it (at most ``timeout`` seconds); if it
  fails (Redis away, data over ``MESSAGE_MAX_BYTES``), the change stays committed and the failure is
  logged with its traceback, never raised into the code that committed;
- one save is one message: a loop of saves in one transaction publishes one message per save, in order.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from django.db.models.signals import post_delete, post_save

from echo.protocol import validate_event, validate_topic
from echo.publishing.broadcast import publish

logger = logging.getLogger(__name__)

CHANGES = ("created", "updated", "deleted")

TopicOf = str | Callable[[Any], str]


class ModelChanges:
    """The connection of one model's saves and deletes to one topic; ``disconnect()`` ends it."""

    def __init__(
        self,
        model: type[models.Model],
        topic: TopicOf,
        fields: Iterable[str],
        event: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.model = model
        self.topic = validate_topic(topic) if isinstance(topic, str) else topic
        self.fields = [_field(model, name) for name in fields]
        self.events = {change: change if event is None else f"{event}.{change}" for change in CHANGES}
        for name in self.events.values():
            validate_event(name)
        self.timeout = timeout
        uid = f"echo.model_changes.{id(self)}"
        self._uid = uid
        post_save.connect(self._saved, sender=model, weak=False, dispatch_uid=uid)
        post_delete.connect(self._deleted, sender=model, weak=False, dispatch_uid=uid)

    def disconnect(self) -> None:
        """Stop publishing this model's changes (changes already committed are still published)."""
        post_save.disconnect(sender=self.model, dispatch_uid=self._uid)
        post_delete.disconnect(sender=self.model, dispatch_uid=self._uid)

    def snapshot(self, instance: models.Model) -> dict[str, Any]:
        """The event's data for ``instance`` as it is now: its pk and the named fields, as JSON values."""
        data: dict[str, Any] = {"pk": _json_value(instance.pk)}
        for name, field in self.fields:
            data[name] = _json_value(field.value_from_object(instance))
        return data

    def _saved(self, sender: Any, instance: models.Model, created: bool, using: str, **_: Any) -> None:
        """Called by ``post_save``: publish the row after its transaction commits."""
        self._on_commit(instance, "created" if created else "updated", using)

    def _deleted(self, sender: Any, instance: models.Model, using: str, **_: Any) -> None:
        """Called by ``post_delete`` (the pk is still set): publish it after the transaction commits."""
        self._on_commit(instance, "deleted", using)

    def _on_commit(self, instance: models.Model, change: str, using: str) -> None:
        # The snapshot is taken now, inside the transaction: by commit time the instance may have
        # changed again (or lost its pk, after a delete).
        topic = self.topic if isinstance(self.topic, str) else self.topic(instance)
        data = self.snapshot(instance)
        transaction.on_commit(functools.partial(self._publish, topic, self.events[change], data), using=using)

    def _publish(self, topic: str, event: str, data: dict[str, Any]) -> None:
        """Called on commit: publish one change; a failure is logged, the commit stands."""
        try:
            publish(topic, data, timeout=self.timeout, event=event)
        except Exception:
            logger.exception(
                "%s pk=%s: the %r event was not published to %r",
                self.model._meta.label,
                data["pk"],
                event,
                topic,
            )


def publish_changes(
    model: type[models.Model],
    *,
    topic: TopicOf,
    fields: Iterable[str],
    event: str | None = None,
    timeout: float = 5.0,
) -> ModelChanges:
    """Publish ``model``'s saved and deleted rows to ``topic`` after each commit, with ``fields``.

    ``topic`` is a topic name, or a function of the instance that returns one (``lambda order:
    f"order-{order.pk}"``: a topic per object). ``fields`` names the model's concrete fields to send
    (a foreign key sends its id); the pk is always sent, as ``pk``. ``event`` prefixes the event names
    (``event="order"``: ``order.created``, ``order.updated``, ``order.deleted``). Call it once per model
    and topic, from an ``AppConfig.ready()``; a bad topic, event or field name raises at once.
    """
    return ModelChanges(model, topic, fields, event, timeout)


def _field(model: type[models.Model], name: str) -> tuple[str, models.Field]:
    field = model._meta.get_field(name)  # FieldDoesNotExist names the model and the field
    if not field.concrete or field.many_to_many:
        raise ValueError(f"{model._meta.label}.{name}: only a concrete, single-valued field can be sent")
    return name, field


_encoder = DjangoJSONEncoder()


def _json_value(value: Any) -> Any:
    """A field's value as JSON: dates, times, Decimal and UUID as DjangoJSONEncoder writes them."""
    if value is None or isinstance(value, str | int | float | bool | list | dict):
        return value
    try:
        return _encoder.default(value)
    except TypeError:
        return value  # left for encode_event_data to refuse, naming its type
