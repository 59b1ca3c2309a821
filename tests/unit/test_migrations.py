"""The Alembic migrations build exactly the schema the models describe."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from dicomgw.index.db import upgrade_sync
from dicomgw.index.models import Base


def test_migrations_match_models(tmp_path: Path) -> None:
    db = tmp_path / "index.sqlite3"
    upgrade_sync(f"sqlite+aiosqlite:///{db}")
    upgrade_sync(f"sqlite+aiosqlite:///{db}")  # idempotent
    with create_engine(f"sqlite:///{db}").connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
