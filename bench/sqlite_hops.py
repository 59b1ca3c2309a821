"""What a SQLite statement costs through SQLAlchemy's aiosqlite driver, and with reads run inline.

    .venv/bin/python bench/sqlite_hops.py

aiosqlite runs every call (execute, fetch, close, commit) on its own thread and hands the result back
to the event loop: a thread round trip of 0.1-0.2 ms on this VM, several per statement. The second
figure runs reads on the loop itself (an aiosqlite connection whose reads skip the thread, the
sqlite3 connection opened with check_same_thread=False) and leaves writes and commits, which may wait
for a lock or an fsync, on the thread. A measurement for issue 10, not used by the gateway yet.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
import time
from typing import Any

from aiosqlite.core import Connection
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

READS = ("select", "with")
STATEMENTS = 3000


class InlineReads(Connection):
    async def _execute(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        name = getattr(fn, "__name__", "")
        write = name in ("execute", "executemany") and not str(args[0]).lstrip().lower().startswith(READS)
        if write or name == "commit":
            return await super()._execute(fn, *args, **kwargs)
        return fn(*args, **kwargs)


def _database() -> str:
    path = os.path.join(tempfile.mkdtemp(), "hops.db")
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT)")
        db.executemany("INSERT INTO t VALUES (?, ?)", [(i, str(i)) for i in range(1000)])
    return path


async def per_statement_us(path: str, inline: bool) -> float:
    options: dict[str, Any] = {}
    if inline:
        options["async_creator"] = lambda: InlineReads(
            lambda: sqlite3.connect(path, check_same_thread=False), 64)
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}", **options)
    async with engine.connect() as conn:
        started = time.perf_counter()
        for i in range(STATEMENTS):
            (await conn.execute(text("SELECT b FROM t WHERE a = :a"), {"a": i % 1000})).fetchall()
        elapsed = time.perf_counter() - started
        await conn.execute(text("INSERT OR REPLACE INTO t VALUES (5000, 'x')"))
        await conn.commit()
        assert (await conn.execute(text("SELECT b FROM t WHERE a = 5000"))).scalar() == "x"
    await engine.dispose()
    return elapsed / STATEMENTS * 1e6


def main() -> None:
    path = _database()
    start = time.perf_counter()
    with sqlite3.connect(path) as db:
        for i in range(STATEMENTS):
            db.execute("SELECT b FROM t WHERE a = ?", (i % 1000,)).fetchall()
    plain = (time.perf_counter() - start) / STATEMENTS * 1e6
    for _ in range(2):  # alternating, twice
        threaded = asyncio.run(per_statement_us(path, inline=False))
        inline = asyncio.run(per_statement_us(path, inline=True))
        print(f"per SELECT: SQLAlchemy+aiosqlite {threaded:.0f} us, reads inline {inline:.0f} us "
              f"({threaded / inline:.1f}x less), sqlite3 alone {plain:.0f} us", flush=True)


if __name__ == "__main__":
    main()
