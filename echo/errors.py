"""Every refusal in one place: WebSocket close codes, the client error behind each, the HTTP API's answer.

A WebSocket client that is refused gets an error frame (``{"type": "error", "code", "detail"}``) and
then a close code (``ClientError``); an HTTP client gets ``{"error": code, "detail": one line}`` with a
status (``api_error``). The codes are the contract: docs/protocol.md lists them.
"""

from __future__ import annotations

from django.http import JsonResponse

# RFC 6455: going away (the server stops; reconnect to another), a policy violation, a message too
# big, try again later (too many connections, too slow, history unreadable).
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013
# IANA-registered: 3000 (unauthorized: the token is bad, expired or revoked: get a new one) and 3003
# (forbidden: do not retry as is).
CLOSE_UNAUTHORIZED = 3000
CLOSE_FORBIDDEN = 3003

# The challenge of every 401 that asks for an API key.
BEARER_CHALLENGE = 'Bearer realm="echo"'
# The code of every 503: Redis (or the layer it needs) cannot be reached now.
UNAVAILABLE = "unavailable"


class ClientError(Exception):
    """A client's mistake: sent back as an error frame, then the socket closes with ``close_code``."""

    def __init__(self, code: str, detail: str, close_code: int = CLOSE_POLICY_VIOLATION) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.close_code = close_code


def api_error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JsonResponse:
    """The JSON answer of every HTTP API refusal: ``{"error": code, "detail": one line}``."""
    response = JsonResponse({"error": code, "detail": detail}, status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    if status == 401 and "WWW-Authenticate" not in response:
        response["WWW-Authenticate"] = BEARER_CHALLENGE
    return response
