"""The repo's nginx config (deploy/nginx/) rewritten to run on this machine in front of local servers.

The config is the repo's, with the changes a local run needs and nothing else: it listens on a given
loopback port instead of port 80, its upstream include lists local servers instead of compose's
``web`` replicas, and everything nginx writes (pid, temp files) goes to a work directory.
``tests/helpers/nginx.py`` runs it under pytest; ``bench/scale.py`` puts two replicas behind it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NGINX_DIR = ROOT / "deploy" / "nginx"
NGINX = os.environ.get("NGINX", "nginx")
START_TIMEOUT = 15.0


def find_nginx() -> str | None:
    """The nginx binary (``$NGINX``, on PATH, or in Debian's /usr/sbin), or None."""
    return shutil.which(NGINX) or shutil.which(NGINX, path="/usr/sbin:/usr/local/sbin")


def local_upstream(ports: list[int], workdir: Path) -> str:
    """The compose upstream include, its ``web:8000`` server line once per local server, plus temp paths."""
    text = (NGINX_DIR / "web-upstream.conf").read_text()
    line = re.search(r"^(\s*)server web:8000(.*)$", text, re.M)
    if line is None:
        raise ValueError("web-upstream.conf has no 'server web:8000' line")
    indent, params = line.groups()
    servers = "\n".join(f"{indent}server 127.0.0.1:{port}{params}" for port in ports)
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp = "".join(f"{kind}_temp_path {workdir / kind};\n" for kind in kinds)
    return text[: line.start()] + servers + text[line.end() :] + "\n" + temp


def write_config(binary: str, port: int, upstream_ports: list[int], workdir: Path) -> list[str]:
    """Write the local config into ``workdir``; return the command that runs it in the foreground."""
    conf = (NGINX_DIR / "nginx.conf").read_text()
    if not re.search(r"^\s*listen 80 default_server;", conf, re.M):
        raise ValueError("nginx.conf no longer listens on 80")
    conf = re.sub(r"listen 80 default_server;", f"listen 127.0.0.1:{port} default_server;", conf)
    (workdir / "nginx.conf").write_text(conf)
    (workdir / "web-upstream.conf").write_text(local_upstream(upstream_ports, workdir))
    # Workers run as "nobody" under root unless told otherwise; they need the work directory.
    user = "user root;" if os.geteuid() == 0 else ""
    globals_ = f"daemon off; pid {workdir / 'nginx.pid'}; error_log stderr notice; {user}"
    return [binary, "-e", "stderr", "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-g", globals_]


def listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


@contextlib.contextmanager
def running_nginx(binary: str, port: int, upstream_ports: list[int], workdir: Path) -> Iterator[int]:
    """Run nginx on ``port`` in front of ``upstream_ports`` until the block ends; yield nginx's pid.

    Its output (one access-log line per request and per closed WebSocket) goes to ``workdir/nginx.log``.
    """
    command = write_config(binary, port, upstream_ports, workdir)
    with open(workdir / "nginx.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("nginx did not start:\n" + (workdir / "nginx.log").read_text()[-4000:])
            time.sleep(0.05)
        yield process.pid
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # fast shutdown: proxied WebSockets are cut
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
