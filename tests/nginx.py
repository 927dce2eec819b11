"""The repo's nginx config (deploy/nginx/) run by a test: Debian's nginx in the foreground, as a child.

Everything nginx writes (pid, temp files) goes to a temporary directory. The config is the repo's, with
the changes a test machine needs and nothing else: it listens on a free loopback port instead of port
80, and its upstream include lists local servers instead of compose's ``web`` replicas. Without nginx
a test skips, except under ``CI=true``, where a missing nginx is a failure.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import devenv
import pytest

from tests.support import ROOT, OutputWatcher, Server, spawn, stop

NGINX_DIR = ROOT / "deploy" / "nginx"
NGINX = os.environ.get("NGINX", "nginx")


def require_nginx() -> str:
    """The nginx binary; skip the test without one, or fail it under CI=true."""
    found = shutil.which(NGINX) or shutil.which(NGINX, path="/usr/sbin:/usr/local/sbin")
    if found:
        return found
    reason = f"no nginx at {NGINX}: apt-get install -y nginx (or set NGINX=/path/to/it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def local_upstream(ports: list[int], workdir: Path) -> str:
    """The compose upstream include, its ``web:8000`` server line once per local server, plus temp paths."""
    text = (NGINX_DIR / "web-upstream.conf").read_text()
    line = re.search(r"^(\s*)server web:8000(.*)$", text, re.M)
    assert line, "web-upstream.conf has no 'server web:8000' line"
    indent, params = line.groups()
    servers = "\n".join(f"{indent}server 127.0.0.1:{port}{params}" for port in ports)
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp = "".join(f"{kind}_temp_path {workdir / kind};\n" for kind in kinds)
    return text[: line.start()] + servers + text[line.end() :] + "\n" + temp


@contextlib.contextmanager
def start_nginx(binary: str, upstream_ports: list[int], workdir: Path) -> Iterator[Server]:
    """Run the repo's nginx.conf in the foreground on a free loopback port; stop it afterwards."""
    port = devenv.free_port()
    conf = (NGINX_DIR / "nginx.conf").read_text()
    assert re.search(r"^\s*listen 80 default_server;", conf, re.M), "nginx.conf no longer listens on 80"
    conf = re.sub(r"listen 80 default_server;", f"listen 127.0.0.1:{port} default_server;", conf)
    (workdir / "nginx.conf").write_text(conf)
    (workdir / "web-upstream.conf").write_text(local_upstream(upstream_ports, workdir))
    # Workers run as "nobody" under root unless told otherwise; they need the temp directory.
    user = "user root;" if os.geteuid() == 0 else ""
    globals_ = f"daemon off; pid {workdir / 'nginx.pid'}; error_log stderr notice; {user}"
    command = [binary, "-e", "stderr", "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-g", globals_]
    process = spawn(command, os.environ)
    output = OutputWatcher(process)
    try:
        # Logged once the listening socket is bound (the master binds it before starting workers).
        output.wait_for(r"start worker processes", seconds=15)
        yield Server(process=process, output=output, port=port)
    finally:
        stop(process, signal.SIGTERM)
