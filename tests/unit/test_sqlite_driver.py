"""The embedded index's SQLite connection: short reads on the loop, long or locked ones on the thread."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from dicomgw.index.db import create_engine

ROWS = 2000


def _engine(path: Path, journal: str = "wal") -> AsyncEngine:
    engine = create_engine(f"sqlite+aiosqlite:///{path}")

    @event.listens_for(engine.sync_engine, "connect")
    def _thread_function(dbapi_connection: Any, _record: Any) -> None:
        # tid() tells on which thread SQLite ran the statement
        dbapi_connection.create_function("tid", 0, threading.get_ident)
        if journal != "wal":
            dbapi_connection.cursor().execute(f"PRAGMA journal_mode={journal}")

    return engine


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "index.sqlite3"
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"v{i}") for i in range(ROWS)])
    conn.close()
    return path


async def test_a_short_select_runs_on_the_event_loop(db: Path) -> None:
    engine = _engine(db)
    async with engine.connect() as conn:
        row = (await conn.execute(text("SELECT tid(), b FROM t WHERE a = 7"))).one()
    await engine.dispose()
    assert row == (threading.get_ident(), "v7")


async def test_a_long_select_moves_to_the_thread_and_answers_in_full(db: Path) -> None:
    engine = _engine(db)
    async with engine.connect() as conn:
        # two million joined rows: far longer than the budget a read may hold the loop
        row = (await conn.execute(text("SELECT max(tid()), count(*) FROM t AS x, t AS y"))).one()
    await engine.dispose()
    assert row[0] != threading.get_ident()
    assert row[1] == ROWS * ROWS


async def test_a_locked_database_is_waited_for_off_the_loop(db: Path) -> None:
    # In WAL mode a reader meets a lock only in rare moments (recovery after a crash, a connection in
    # exclusive mode); a rollback journal makes a writer's exclusive lock block every reader.
    engine = _engine(db, journal="delete")
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))  # the pool's connection exists before the lock is taken
        holder = sqlite3.connect(db, check_same_thread=False)
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("UPDATE t SET b = 'changed' WHERE a = 1")
        release = asyncio.get_running_loop().call_later(0.5, holder.commit)
        ticks: list[float] = []

        async def ticker() -> None:
            while True:
                ticks.append(time.perf_counter())
                await asyncio.sleep(0.01)

        beat = asyncio.create_task(ticker())
        try:
            row = (await conn.execute(text("SELECT b FROM t WHERE a = 1"))).one()
        finally:
            beat.cancel()
            release.cancel()
            holder.close()
    await engine.dispose()
    assert row == ("changed",)
    gaps = [later - earlier for earlier, later in itertools.pairwise(ticks)]
    assert len(ticks) > 10 and max(gaps) < 0.25, f"the loop stood still for {max(gaps):.2f} s"


async def test_writes_returning_and_a_long_read_inside_one_transaction(db: Path) -> None:
    engine = _engine(db)
    async with engine.begin() as conn:
        returned = (await conn.execute(text("INSERT INTO t VALUES (:a, 'new') RETURNING a, tid()"),
                                       {"a": ROWS})).one()
        long = (await conn.execute(text("SELECT count(*) FROM t AS x, t AS y"))).scalar()
        mine = (await conn.execute(text("SELECT b FROM t WHERE a = :a"), {"a": ROWS})).scalar()
    await engine.dispose()
    assert returned[0] == ROWS and returned[1] != threading.get_ident()
    assert long == (ROWS + 1) ** 2
    assert mine == "new"
    with sqlite3.connect(db) as other:  # committed, as another process sees it
        assert other.execute("SELECT b FROM t WHERE a = ?", (ROWS,)).fetchone() == ("new",)


async def test_a_streamed_answer_arrives_whole_in_order(db: Path) -> None:
    engine = _engine(db)
    async with engine.connect() as conn:
        small = [r.a async for r in await conn.stream(text("SELECT a FROM t WHERE a < 10 ORDER BY a"))]
        joined = await conn.stream(text("SELECT x.a FROM t AS x, t AS y WHERE y.a < 40 ORDER BY x.a, y.a"))
        big = [r.a async for r in joined]
    await engine.dispose()
    assert small == list(range(10))
    assert big == [a for a in range(ROWS) for _ in range(40)]


async def test_a_failing_select_raises_the_database_error(db: Path) -> None:
    engine = _engine(db)
    async with engine.connect() as conn:
        with pytest.raises(Exception, match="no such table"):
            await conn.execute(text("SELECT * FROM missing"))
        assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == ROWS
    await engine.dispose()
