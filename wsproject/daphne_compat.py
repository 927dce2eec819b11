"""Everything the development server does inside daphne: its WebSocket protocol and factory, subclassed.

Imported only by ``manage.py runserver`` (``wsproject/devserver``), which calls ``install()`` before
daphne starts: daphne, Twisted and autobahn are development dependencies, never imported by the
production server. The subclasses make daphne close and send as RFC 6455 and the ASGI spec ask:

* Close codes. Daphne closes through autobahn's ``sendClose``, which only accepts 1000 and 3000-4999
  (the codes an *application* may pick in the browser API), so a consumer closing with 1008 (policy),
  1009 (too big), 1011, 1013 (try again later) or 1001 (going away) crashes with "invalid close code"
  and the client sees 1011 instead. It also drops the close reason. This sends the close frame through
  autobahn's lower-level ``sendCloseFrame`` instead, for codes a server may send, with the reason.
* Sends after the client left. ASGI says ``send`` then raises an ``OSError``; daphne lets autobahn's
  ``Disconnected`` (a ``RuntimeError``) through. This raises ``ClientGone``, an ``OSError``, instead,
  so consumers handle the (everyday) race the same way on every server.
* Invalid frames. autobahn drops the TCP connection on a protocol error (1007 for invalid UTF-8)
  instead of sending the close frame: ``failByDrop`` is turned off.

``tests/test_internals.py`` has a contract test for each daphne and autobahn name used here, and
runserver refuses other versions than ``TESTED`` (``wsproject/versions.py``).
"""

from __future__ import annotations

from typing import Any

import daphne.server
from autobahn.exception import Disconnected
from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol

from wsproject import versions

# The versions tests/test_internals.py ran against: requirements-dev.txt's pins.
TESTED = {"daphne": "4.2.3", "autobahn": "26.10.2"}

# RFC 6455 section 7.4.1 codes a server may send, plus the registered 1012-1014 and private 3000-4999.
SENDABLE = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
MAX_REASON_BYTES = 123


def refusal() -> str | None:
    """Called by runserver before daphne starts: why it must not (untested versions), or None."""
    return versions.refusal(TESTED, "wsproject/daphne_compat.py")


class ClientGone(ConnectionResetError):
    """A message was sent to a WebSocket whose client had already gone."""


class CompatWebSocketProtocol(WebSocketProtocol):
    """daphne's WebSocket protocol, closing with any code a server may send, and its reason."""

    def serverClose(self, code: int | None = None, reason: str | None = None) -> None:
        """Called by daphne's timeout checks (no code) and by ``handle_reply`` for ``websocket.close``."""
        code = 1000 if code is None else code
        if code not in SENDABLE and not 3000 <= code <= 4999:
            code = 1011
        encoded = reason.encode("utf-8")[:MAX_REASON_BYTES] if reason else None
        self.sendCloseFrame(code=code, reasonUtf8=encoded, isReply=False)

    def handle_reply(self, message: dict[str, Any]) -> None:
        """Called by daphne's server with each message the app sends."""
        if message.get("type") == "websocket.close" and self.state != self.STATE_CONNECTING:
            self.serverClose(message.get("code"), message.get("reason"))  # daphne's drops the reason
            return
        try:
            super().handle_reply(message)
        except Disconnected as exc:
            raise ClientGone(str(exc)) from exc


class CompatWebSocketFactory(WebSocketFactory):
    """daphne's factory, making ``CompatWebSocketProtocol`` and sending the close frames autobahn picks."""

    protocol = CompatWebSocketProtocol

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Send the close frame autobahn chose (1007 for invalid UTF-8) instead of dropping the TCP
        # connection. (Frame size is limited by the consumer: daphne sets its own size options later.)
        self.setProtocolOptions(failByDrop=False)


def install() -> None:
    """Called by runserver before daphne's server starts: it builds its factory from this name."""
    daphne.server.WebSocketFactory = CompatWebSocketFactory
