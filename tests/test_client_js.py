"""The client module's unit tests (tests/js/, Node's own test runner), run under pytest.

They need ``node`` (18 or newer, for ``node --test``): without it the test is skipped, except under
``CI=true``, where it fails.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.helpers.processes import ROOT, timeout
from tests.helpers.skips import skip_or_fail

pytestmark = pytest.mark.system  # a Node process


def test_the_client_module_unit_tests_pass() -> None:
    node = shutil.which("node")
    if node is None:
        skip_or_fail("no node on PATH: install Node.js 18 or newer")
    result = subprocess.run(
        [node, "--no-warnings", "--test", *map(str, sorted(ROOT.glob("tests/js/*.test.mjs")))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout(60),
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
