"""Reading another package's function, for the contract tests that pin what ours re-implements."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any


def body_statements(function: Callable[..., Any]) -> list[str]:
    """The stripped, non-blank lines of ``function``'s body: its ``def`` line and docstring left out."""
    source = inspect.getsource(function)
    body = source.split('"""')[-1] if '"""' in source else source.split("\n", 1)[1]
    return [line.strip() for line in body.splitlines() if line.strip()]
