"""The startup check that a package whose internals we build on is the version our tests ran against.

``wsproject/uvicorn_ws.py`` and ``wsproject/daphne_compat.py`` subclass private classes of uvicorn and
daphne; ``echo/ws/runtime.py``, ``echo/layer/redis_target.py`` and ``echo/ops/metrics.py`` rely on
Channels', redis-py's and prometheus_client's. Each declares, in ``TESTED``, the versions that
``tests/test_internals.py`` / ``tests/test_internals_app.py`` checked it against
(the ``==`` pins of the requirements files); another version may have changed what they rely on
without a single error, so the servers refuse it, in one line, unless ``WS_ALLOW_UNTESTED_SERVER=1``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from importlib import metadata

logger = logging.getLogger(__name__)

ALLOW_UNTESTED = "WS_ALLOW_UNTESTED_SERVER"


def installed_version(package: str) -> str | None:
    """The version of ``package`` installed here, or None if it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def differences(tested: Mapping[str, str]) -> list[str]:
    """What is installed other than ``tested`` (package -> version), one phrase per package."""
    found = []
    for package, version in tested.items():
        installed = installed_version(package)
        if installed is None:
            found.append(f"{package} is not installed (tested: {version})")
        elif installed != version:
            found.append(f"{package} {installed} is not the tested {version}")
    return found


def app_refusal() -> str | None:
    """Called before either server starts: ``refusal`` for each module of the app that relies on
    another package's internals (Channels' consumer, redis-py's pools, prometheus_client's files)."""
    from echo.layer import redis_target
    from echo.ops import metrics
    from echo.ws import runtime

    for module, path in (
        (runtime, "echo/ws/runtime.py"),
        (redis_target, "echo/layer/redis_target.py"),
        (metrics, "echo/ops/metrics.py"),
    ):
        if problem := refusal(module.TESTED, path):
            return problem
    return None


def refusal(tested: Mapping[str, str], module: str) -> str | None:
    """Called before a server starts: why it must not, in one line, or None if it may.

    None when every package is at its tested version, or when ``WS_ALLOW_UNTESTED_SERVER=1`` (then the
    difference is logged as a warning). ``module`` is the file that relies on the packages' internals.
    """
    found = differences(tested)
    if not found:
        return None
    if os.environ.get(ALLOW_UNTESTED) == "1":
        logger.warning("%s; starting anyway (%s=1)", "; ".join(found), ALLOW_UNTESTED)
        return None
    return (
        f"{'; '.join(found)}: {module} relies on internals that tests/test_internals.py checks against "
        f"the tested versions (set {ALLOW_UNTESTED}=1 to try anyway)"
    )
