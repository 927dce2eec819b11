"""Log filters: keep per-connection chatter and anyone's hostile requests out of production logs."""

import logging

from echo.ops import metrics

ROUTINE = ("connection open", "connection closed")


class DropRoutineConnectionLines(logging.Filter):
    """Drops uvicorn's per-WebSocket "connection open/closed" INFO lines (two per client, at 10,000
    clients a flood that hides what matters); refusals and errors still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and record.getMessage() in ROUTINE)


class OneLineSuspiciousRequests(logging.Filter):
    """Turns Django's ``django.security.*`` records (a foreign ``Host`` header: ``DisallowedHost``)
    into one WARNING line with the client's address, without the traceback Django attaches, and counts
    them (``http_refused_total``): anyone can send such a request, and 150 bytes of it must not buy
    30 lines of log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("django.security."):
            request = getattr(record, "request", None)
            address = getattr(request, "META", {}).get("REMOTE_ADDR", "unknown")
            reason = record.name.rpartition(".")[2]
            record.msg, record.args = (
                "Refused a request from %s: %s: %s",
                (address, reason, record.getMessage()),
            )
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
            metrics.inc("http_refused_total", reason)
        return True
