"""The repo's nginx config (deploy/nginx/) run by a test: Debian's nginx in the foreground, as a child.

Everything nginx writes (pid, temp files) goes to a temporary directory. The config is the repo's, with
the changes a test machine needs and nothing else (``bench/nginx.py`` makes them, for the benchmark's
``scale`` scenario too): it listens on a free loopback port instead of port 80, and its upstream include
lists local servers instead of compose's ``web`` replicas. Without nginx a test skips, except under
``CI=true``, where a missing nginx is a failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from bench.nginx import NGINX, find_nginx, write_config
from scripts.ports import free_port
from tests.helpers.processes import OutputWatcher, Server, spawn, stop
from tests.helpers.skips import skip_or_fail


def require_nginx() -> str:
    """The nginx binary; skip the test without one, or fail it under CI=true."""
    found = find_nginx()
    if found:
        return found
    reason = f"no nginx at {NGINX}: apt-get install -y nginx (or set NGINX=/path/to/it)"
    skip_or_fail(reason)


@contextlib.contextmanager
def start_nginx(binary: str, upstream_ports: list[int], workdir: Path) -> Iterator[Server]:
    """Run the repo's nginx.conf in the foreground on a free loopback port; stop it afterwards."""
    port = free_port()
    command = write_config(binary, port, upstream_ports, workdir)
    process = spawn(command, dict(os.environ))
    output = OutputWatcher(process)
    try:
        # Logged once the listening socket is bound (the master binds it before starting workers).
        output.wait_for(r"start worker processes", seconds=15)
        yield Server(process=process, output=output, port=port)
    finally:
        stop(process, signal.SIGTERM)
