"""Engine and session factory for the index (SQLite embedded, PostgreSQL in production) and migrations."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from dicomgw.index import sqlite_driver

MIGRATIONS = Path(__file__).parent / "migrations"
CONNECT_SECONDS = 5
POOL_SECONDS = 10
STATEMENT_SECONDS = 120


def _sqlite_pragmas(dbapi_connection, connection_record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_connection.cursor()
    # WAL lets readers run beside the single writer; FULL makes a commit durable on power loss,
    # which "acknowledged means durable" needs.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={sqlite_driver.BUSY_TIMEOUT_MS}")
    # QIDO matching is case-sensitive except for person names (which use folded columns)
    cur.execute("PRAGMA case_sensitive_like=ON")
    cur.close()


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        options: dict[str, Any] = {"connect_args": {"timeout": sqlite_driver.BUSY_TIMEOUT_MS / 1000}}
        if url.startswith("sqlite+aiosqlite:///") and path and path != ":memory:" and "?" not in path:
            options = {"async_creator": sqlite_driver.connector(path)}
        engine = create_async_engine(url, **options)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # Bounded waits, so that a database that hangs (not down: hung) cannot hold every request: a
    # connection must come within CONNECT_SECONDS, a pooled one free up within POOL_SECONDS, a
    # statement answer within STATEMENT_SECONDS. Each ends in a 503 with Retry-After.
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql+asyncpg"):
        connect_args = {"timeout": CONNECT_SECONDS, "command_timeout": STATEMENT_SECONDS}
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
                               pool_timeout=POOL_SECONDS, connect_args=connect_args)


def session_factory(engine: AsyncEngine) -> async_sessionmaker:  # type: ignore[type-arg]
    return async_sessionmaker(engine, expire_on_commit=False)


def _alembic_config(url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def upgrade_sync(url: str) -> None:
    """Bring the schema to the newest migration (idempotent)."""
    from alembic import command

    command.upgrade(_alembic_config(url), "head")


async def upgrade(url: str) -> None:
    await asyncio.to_thread(upgrade_sync, url)


def is_sqlite(engine: AsyncEngine | Engine) -> bool:
    return engine.dialect.name == "sqlite"
