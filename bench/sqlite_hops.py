"""What a SQLite statement costs through SQLAlchemy's aiosqlite driver, and with reads run inline.

    .venv/bin/python bench/sqlite_hops.py

aiosqlite runs every call (execute, fetch, close, commit) on its own thread and hands the result back
to the event loop: a thread round trip of 0.1-0.2 ms on this VM, several per statement. The second
figure uses the gateway's own connection (dicomgw.index.sqlite_driver): a short SELECT runs on the
loop itself, and writes and commits, which may wait for a lock or an fsync, stay on the thread.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
import time
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from dicomgw.index import sqlite_driver

STATEMENTS = 3000


def _database() -> str:
    path = os.path.join(tempfile.mkdtemp(), "hops.db")
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT)")
        db.executemany("INSERT INTO t VALUES (?, ?)", [(i, str(i)) for i in range(1000)])
    return path


async def per_statement_us(path: str, inline: bool) -> float:
    options: dict[str, Any] = {"async_creator": sqlite_driver.connector(path)} if inline else {}
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
