"""Log filters: keep per-connection chatter out of production logs."""

import logging

ROUTINE = ("connection open", "connection closed")


class DropRoutineConnectionLines(logging.Filter):
    """Drops uvicorn's per-WebSocket "connection open/closed" INFO lines (two per client, at 10,000
    clients a flood that hides what matters); refusals and errors still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and record.getMessage() in ROUTINE)
