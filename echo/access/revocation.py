"""Revocation that takes effect now: a changed identity closes its sockets, in every server process.

Each connection let in by a session or a token joins its identity's group (``identity_group``). When
Django says an identity may have lost its right (a user saved, deactivated, deleted or logged out; an
API key deleted), ``REVOKED_EVENT`` goes to that group through the channel layer, after the
transaction commits, and each member checks its own credential again (``echo.access.identity.Credential``) and
closes if it no longer holds: 3003 when it is final, 3000 when a new token would do.

Signals are the hook, so a change made without them (``QuerySet.update(is_active=False)``) closes
nothing until the connection's next check; the admin, ``user.save()``, ``logout`` and
``manage.py api_key revoke`` all send them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import post_delete, post_save

from echo.access.identity import Credential, key_id, session_digest
from echo.models import ApiKey
from echo.ops import metrics
from echo.publishing.broadcast import group_send_from_sync

logger = logging.getLogger(__name__)

REVOKED_EVENT = "identity.revoked"

# Layer sends started from inside an event loop, referenced until done (the loop keeps weak references).
_pending: set[asyncio.Task[None]] = set()


def identity_group(credential: Credential) -> str:
    """The group a connection of ``credential`` joins, to hear when its identity changes."""
    if credential.key_id is not None:
        return f"identity.key.{credential.key_id}"
    return f"identity.user.{credential.user_id}"


def connect_signals() -> None:
    """Called once, from the app's ``ready``."""
    post_save.connect(
        _user_saved, sender=settings.AUTH_USER_MODEL, dispatch_uid="echo.access.revocation.saved"
    )
    post_delete.connect(
        _user_deleted, sender=settings.AUTH_USER_MODEL, dispatch_uid="echo.access.revocation.deleted"
    )
    post_delete.connect(_key_deleted, sender=ApiKey, dispatch_uid="echo.access.revocation.key")
    user_logged_out.connect(_logged_out, dispatch_uid="echo.access.revocation.logout")


def access_changed(user: Any) -> None:
    """Called by the app when its answer for ``user`` may have changed (an order handed to someone
    else): every socket of the user asks its credential, and the ``call:`` rules, again."""
    _notify(f"identity.user.{user.pk}", {"type": REVOKED_EVENT})


def _user_saved(sender: Any, instance: Any, created: bool, update_fields: Any = None, **kwargs: Any) -> None:
    # A login saves last_login and nothing else: no reason to check anyone's sockets.
    if not created and not (update_fields and set(update_fields) <= {"last_login"}):
        _notify(f"identity.user.{instance.pk}", {"type": REVOKED_EVENT})


def _user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    _notify(f"identity.user.{instance.pk}", {"type": REVOKED_EVENT})


def _key_deleted(sender: Any, instance: ApiKey, **kwargs: Any) -> None:
    _notify(f"identity.key.{key_id(instance)}", {"type": REVOKED_EVENT})


def _logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if user is not None and session_key:
        _notify(f"identity.user.{user.pk}", {"type": REVOKED_EVENT, "session": session_digest(session_key)})


def _notify(group: str, event: dict[str, Any]) -> None:
    """Send ``event`` to ``group`` once the current transaction (if any) has committed: members read
    the database to decide, and must see the change."""
    transaction.on_commit(lambda: _send(group, event))


def _send(group: str, event: dict[str, Any]) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    try:
        if loop is None:
            group_send_from_sync(group, event)
            return
        layer = get_channel_layer()
        if layer is None:
            return
        task = loop.create_task(layer.group_send(group, event))
        _pending.add(task)
        task.add_done_callback(functools.partial(_log_failure, group))
    except Exception as exc:
        _failed(group, exc)


def _log_failure(group: str, task: asyncio.Task[None]) -> None:
    _pending.discard(task)
    if not task.cancelled() and task.exception() is not None:
        _failed(group, task.exception())


def _failed(group: str, exc: BaseException | None) -> None:
    # The change itself stands (the database has it): new connections and tokens are refused; the open
    # sockets stay until they close or their token expires.
    metrics.inc("ws_revocations_failed_total")
    logger.warning("Could not tell %s's sockets of a revocation: %s", group, type(exc).__name__)
