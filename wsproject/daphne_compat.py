"""Make daphne (``manage.py runserver``) close and send as RFC 6455 and the ASGI spec ask.

* Close codes. Daphne closes through autobahn's ``sendClose``, which only accepts 1000 and 3000-4999
  (the codes an *application* may pick in the browser API), so a consumer closing with 1008 (policy),
  1009 (too big), 1011, 1013 (try again later) or 1001 (going away) crashes with "invalid close code"
  and the client sees 1011 instead. It also drops the close reason. This sends the close frame through
  autobahn's lower-level ``sendCloseFrame`` instead, for codes a server may send, with the reason.
* Sends after the client left. ASGI says ``send`` then raises an ``OSError``; daphne lets autobahn's
  ``Disconnected`` (a ``RuntimeError``) through. This raises ``ClientGone``, an ``OSError``, instead,
  so consumers handle the (everyday) race the same way on every server.

Applied once, when the ASGI application is imported in a daphne process; versions are pinned, and
``tests/test_hostile.py`` fails if an upgrade breaks it.
"""

from __future__ import annotations

from typing import Any

# RFC 6455 section 7.4.1 codes a server may send, plus the registered 1012-1014 and private 3000-4999.
SENDABLE = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
MAX_REASON_BYTES = 123


class ClientGone(ConnectionResetError):
    """A message was sent to a WebSocket whose client had already gone."""


def patch_daphne() -> None:
    """Patch daphne's WebSocket protocol (once): close codes and reasons, sends after disconnect."""
    try:
        from autobahn.exception import Disconnected
        from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol
    except ImportError:  # not running under daphne: nothing to do
        return
    if getattr(WebSocketProtocol, "_rfc6455_close_codes", False):
        return

    def server_close(self: Any, code: int | None = None, reason: str | None = None) -> None:
        code = 1000 if code is None else code
        if code not in SENDABLE and not 3000 <= code <= 4999:
            code = 1011
        encoded = reason.encode("utf-8")[:MAX_REASON_BYTES] if reason else None
        self.sendCloseFrame(code=code, reasonUtf8=encoded, isReply=False)

    original_handle_reply = WebSocketProtocol.handle_reply

    def handle_reply(self: Any, message: dict[str, Any]) -> None:
        if message.get("type") == "websocket.close" and self.state != self.STATE_CONNECTING:
            server_close(self, message.get("code"), message.get("reason"))
            return
        try:
            original_handle_reply(self, message)
        except Disconnected as exc:
            raise ClientGone(str(exc)) from exc

    original_factory_init = WebSocketFactory.__init__

    def factory_init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_factory_init(self, *args, **kwargs)
        # Send the close frame autobahn chose (1007 for invalid UTF-8) instead of dropping the TCP
        # connection. (Frame size is limited by the consumer: daphne sets its own size options later.)
        self.setProtocolOptions(failByDrop=False)

    WebSocketProtocol.serverClose = server_close
    WebSocketProtocol.handle_reply = handle_reply
    WebSocketFactory.__init__ = factory_init
    WebSocketProtocol._rfc6455_close_codes = True
