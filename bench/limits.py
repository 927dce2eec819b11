"""Raise the open-files limit: every client holds a socket on each side of the loopback."""

from __future__ import annotations

import resource

WANTED_OPEN_FILES = 65536
# Descriptors a process needs besides its connections: Redis, listening sockets, epoll, pipes, files.
RESERVED_OPEN_FILES = 1000


def raise_open_files_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE as far as the hard limit allows; return the new soft limit.

    Called at the start of the runner (its server children inherit it), the load-generator workers
    and the baseline server. Only a privileged process (CAP_SYS_RESOURCE) may raise the hard limit:
    that is left to whoever sets up the machine (``ulimit -Hn``, systemd's ``LimitNOFILE``, Docker's
    ``--ulimit nofile=``).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = WANTED_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, WANTED_OPEN_FILES)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        return wanted
    return soft


def connections_per_process() -> int:
    """How many connections one process (a server, or a load-generator worker) can hold here."""
    return max(0, raise_open_files_limit() - RESERVED_OPEN_FILES)
