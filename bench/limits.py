"""Raise the open-files limit: 10,000 clients need 10,000 sockets on each side of the loopback."""

from __future__ import annotations

import resource

WANTED_OPEN_FILES = 65536


def raise_open_files_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE as far as the hard limit allows; return the new soft limit.

    Called at the start of the runner (its server children inherit it), the load-generator workers
    and the baseline server.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = WANTED_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, WANTED_OPEN_FILES)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        return wanted
    return soft
