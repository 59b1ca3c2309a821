"""Polling with a deadline, the one way tests wait for background work (never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], seconds: float = 60, *, interval: float = 0.2,
             ignore: tuple[type[BaseException], ...] = (), log: Path | None = None) -> T:
    """Call ``predicate`` until it returns something truthy (returned), or fail after ``seconds``.

    Exceptions of the ``ignore`` types count as "not yet"; ``log`` is quoted in the failure.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except ignore:
            value = None  # type: ignore[assignment]
        if value:
            return value
        time.sleep(interval)
    tail = f":\n{log.read_text()[-2000:]}" if log is not None and log.exists() else ""
    raise AssertionError(f"condition not met within {seconds} s{tail}")
