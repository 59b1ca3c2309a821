"""Background work that one process of several runs (dicomgw.background.in_one_process)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from dicomgw.background import in_one_process


async def test_one_process_runs_the_work_and_another_takes_over_when_it_stops(tmp_path: Path) -> None:
    running: list[str] = []

    def work(name: str):  # type: ignore[no-untyped-def]
        @contextlib.asynccontextmanager
        async def manager() -> AsyncIterator[None]:
            running.append(name)
            try:
                yield
            finally:
                running.remove(name)

        return lambda: [manager()]

    lock = tmp_path / "background.lock"
    first = in_one_process(lock, work("first"), retry_seconds=0.05)
    second = in_one_process(lock, work("second"), retry_seconds=0.05)
    await first.__aenter__()
    await second.__aenter__()
    await asyncio.sleep(0.2)
    assert running == ["first"]  # the lock holder only
    await first.__aexit__(None, None, None)  # the process stops (or dies: the kernel drops its lock)
    for _ in range(100):
        if running:
            break
        await asyncio.sleep(0.02)
    assert running == ["second"]
    await second.__aexit__(None, None, None)
    assert running == []
