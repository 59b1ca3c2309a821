"""Background work: a coroutine running for the lifetime of a context, and work one process of many runs."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

log = logging.getLogger("dicomgw.background")


@contextlib.asynccontextmanager
async def running(coroutine: Coroutine[Any, Any, None], name: str) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(coroutine, name=name)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def in_one_process(
    lock_path: Path, managers: Callable[[], Sequence[AbstractAsyncContextManager[None]]],
    retry_seconds: float = 2.0,
) -> AsyncIterator[None]:
    """Run ``managers`` in whichever process of a server holds ``lock_path`` (an flock).

    Several processes serve the same data folder (``dicomgw serve`` starts one per core); the
    background loop and the DIMSE listener must run once. The first process to lock the file runs
    them; the others retry every ``retry_seconds``, so a process that dies hands them on (the kernel
    drops its lock).
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)

    def try_lock() -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    async def wait_then_lead() -> None:
        while True:
            if try_lock():
                break
            await asyncio.sleep(retry_seconds)
        log.info("this process now runs the background work", extra={"pid": os.getpid()})
        try:
            async with contextlib.AsyncExitStack() as stack:
                for manager in managers():
                    await stack.enter_async_context(manager)
                await asyncio.Event().wait()
        except Exception:
            log.exception("background work failed")
            raise

    try:
        if try_lock():  # the usual case, and the only one with one process: started before serving
            async with contextlib.AsyncExitStack() as stack:
                for manager in managers():
                    await stack.enter_async_context(manager)
                yield
        else:
            async with running(wait_then_lead(), "dicomgw-background-standby"):
                yield
    finally:
        os.close(fd)  # releases the lock
