"""Where a benchmark ran: hardware, software versions, the code measured and how busy the machine was.

Every report carries this, because a figure means nothing without the machine it was measured on.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("Django", "channels", "channels-redis", "daphne", "uvicorn", "websockets", "uvloop")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or the platform's guess elsewhere."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def redis_version(url: str) -> str:
    """The Redis server's version, as it reports it."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=5)
        try:
            return str(client.info("server")["redis_version"])
        finally:
            client.close()
    except (redis.RedisError, ValueError) as exc:  # ValueError: a Sentinel or Cluster URL
        return f"unknown ({type(exc).__name__})"


def git_state() -> str:
    """The commit measured, with ``+ uncommitted changes`` when the working tree differs from it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = [line for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line]
    return f"{commit} + uncommitted changes in {len(dirty)} files" if dirty else commit


def describe(redis_url: str) -> dict[str, Any]:
    """Hardware, versions and load of this machine now."""
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    versions["redis server"] = redis_version(redis_url)
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "versions": versions,
        "code": git_state(),
        "load_before": os.getloadavg(),
    }
