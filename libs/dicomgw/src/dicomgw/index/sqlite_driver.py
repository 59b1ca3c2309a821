"""The embedded index's SQLite connection: aiosqlite with the thread kept for what may wait.

aiosqlite runs every call on one thread per connection, and SQLAlchemy makes four calls per statement
(cursor, execute, fetch, close). Each is a round trip through a queue and the event loop's wake-up
pipe: a SELECT of one row costs 2.5 ms that way on the development VM against 0.15 ms on the loop
itself (bench/sqlite_hops.py), and py-spy put a third of a frame request's loop time in those round
trips.

This connection keeps the thread for the calls that may wait: writes (for another process's lock, for
the fsync of a commit) and reads that turn out to be long. A SELECT first runs on the event loop under
a time budget that SQLite's progress handler enforces, with no busy wait. If the budget runs out or the
database is locked, the SELECT is abandoned (an interrupted SELECT changes nothing, and an open
transaction stays open) and is run again on the thread, where its rows are fetched as before: a large
answer still streams from a server-side cursor. Cursors are made and closed without a round trip, and
so are commit and rollback of a connection with no open transaction (the pool's reset on return).
"""

from __future__ import annotations

import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import aiosqlite
from aiosqlite.context import contextmanager

# Longest a SELECT may hold the event loop before it moves to the thread. A round trip to the thread
# costs 0.1-0.2 ms here, so a read up to this long is no slower for others than the hops it saves.
BUDGET_SECONDS = 0.002
# SQLite virtual-machine steps between two checks of the budget (each check is a Python call).
_STEPS_PER_CHECK = 2000
# Kept in line with the busy timeout the engine sets on every connection (dicomgw.index.db).
BUSY_TIMEOUT_MS = 30000
_RETRY_ON_THREAD = ("interrupted", "database is locked", "database table is locked")


def _is_select(sql: str) -> bool:
    return sql.lstrip()[:6].upper() == "SELECT"


class Cursor(aiosqlite.Cursor):
    """A cursor whose SELECTs may have all their rows already, fetched on the loop."""

    def __init__(self, conn: Connection, cursor: sqlite3.Cursor) -> None:
        super().__init__(conn, cursor)
        self._owner = conn
        self._rows: deque[Any] | None = None

    async def execute(self, sql: str, parameters: Iterable[Any] | None = None) -> Cursor:
        params = [] if parameters is None else parameters
        self._rows = None
        if _is_select(sql):
            rows = self._owner.select_inline(self._cursor, sql, params)
            if rows is not None:
                self._rows = deque(rows)
                return self
            await self._execute(self._cursor.execute, sql, params)
        else:
            # A write, with its RETURNING rows if any, in one round trip
            self._rows = await self._execute(self._execute_write, sql, params)
        return self

    def _execute_write(self, sql: str, params: Any) -> deque[Any] | None:
        self._cursor.execute(sql, params)
        return deque(self._cursor.fetchall()) if self._cursor.description else None

    async def fetchone(self) -> Any:
        if self._rows is None:
            return await super().fetchone()
        return self._rows.popleft() if self._rows else None

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        if self._rows is None:
            return list(await super().fetchmany(size))
        count = self._cursor.arraysize if size is None else size
        return [self._rows.popleft() for _ in range(min(count, len(self._rows)))]

    async def fetchall(self) -> list[Any]:
        if self._rows is None:
            return list(await super().fetchall())
        rows = list(self._rows)
        self._rows.clear()
        return rows

    async def close(self) -> None:
        self._rows = None
        self._cursor.close()


class Connection(aiosqlite.Connection):
    """An aiosqlite connection that SQLAlchemy's aiosqlite dialect uses through ``async_creator``."""

    def select_inline(self, cursor: sqlite3.Cursor, sql: str, params: Any) -> list[Any] | None:
        """All rows of a SELECT run on the calling thread, or None if it needs the connection's thread."""
        conn = self._conn
        deadline = time.perf_counter() + BUDGET_SECONDS

        def over_budget() -> int:
            return 1 if time.perf_counter() > deadline else 0

        if not self._no_busy_wait:
            conn.execute("PRAGMA busy_timeout=0").close()
            self._no_busy_wait = True  # until the thread's next call puts the timeout back
        conn.set_progress_handler(over_budget, _STEPS_PER_CHECK)
        try:
            cursor.execute(sql, params)
            return cursor.fetchall()
        except sqlite3.OperationalError as error:
            if str(error).startswith(_RETRY_ON_THREAD):
                return None
            raise
        finally:
            conn.set_progress_handler(None, 0)

    # The busy timeout is switched only when the side changes (a pragma each way cost 20-40 us a
    # SELECT): off for reads on the loop, back on before the thread's next call, which may wait.
    _no_busy_wait = False

    async def _execute(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self._no_busy_wait and self._connection is not None:
            self._no_busy_wait = False
            fn = partial(self._with_busy_timeout, fn)
        return await super()._execute(fn, *args, **kwargs)

    def _with_busy_timeout(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self._conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}").close()
        return fn(*args, **kwargs)

    @contextmanager
    async def cursor(self) -> aiosqlite.Cursor:
        return Cursor(self, self._conn.cursor())

    async def commit(self) -> None:
        if self._conn.in_transaction:
            await super().commit()

    async def rollback(self) -> None:
        if self._conn.in_transaction:
            await super().rollback()


def connector(path: str, *, timeout: float = BUSY_TIMEOUT_MS / 1000) -> Callable[[], Connection]:
    """The ``async_creator`` of an engine on the SQLite file ``path``."""

    def create() -> Connection:
        # The loop's calls and the thread's never overlap (SQLAlchemy runs one statement at a time
        # per connection), so the connection may be used from both.
        conn = Connection(partial(sqlite3.connect, path, timeout=timeout, check_same_thread=False),
                          iter_chunk_size=64)
        conn._thread.daemon = True  # as SQLAlchemy's own aiosqlite connect does: never holds up exit
        return conn

    return create
