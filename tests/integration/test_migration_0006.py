"""Migration 0006 on an index that already holds data, on SQLite and PostgreSQL: every row lands in
the default partition, the queued work stays valid, the same UIDs can then be stored in another
partition, and deleting a study still cascades to its series and instances."""

from __future__ import annotations

import asyncio

from alembic import command
from sqlalchemy import text

from dicomgw.index.db import _alembic_config, create_engine, upgrade_sync

ROWS = [
    "INSERT INTO studies (study_instance_uid, attributes_json) VALUES ('1.2.3', '')",
    "INSERT INTO series (series_instance_uid, study_instance_uid, attributes_json) "
    "VALUES ('1.2.3.4', '1.2.3', '')",
    "INSERT INTO instances (sop_instance_uid, series_instance_uid, study_instance_uid, sop_class_uid, "
    "transfer_syntax_uid, object_key, size, sha256, metadata_json, layout_json, verify_status) VALUES "
    "('1.2.3.4.5', '1.2.3.4', '1.2.3', '1.2.840.10008.5.1.4.1.1.2', '1.2.840.10008.1.2.1', "
    "'originals/1.2.3/1.2.3.4/1.2.3.4.5/00.dcm', 1, :sha, '{}', '{}', 'pending')",
    "INSERT INTO outbox (task, key, attempts) VALUES ('verify', '1.2.3.4.5', 0)",
]


def _run(url: str, *steps: list[tuple[str, dict[str, object]]]) -> list[list[tuple[object, ...]]]:
    """Run each step's statements in a transaction of its own; the rows of each step's last one."""

    async def go() -> list[list[tuple[object, ...]]]:
        engine = create_engine(url)
        out = []
        try:
            for statements in steps:
                async with engine.begin() as conn:
                    result: list[tuple[object, ...]] = []
                    for sql, params in statements:
                        done = await conn.execute(text(sql), params)
                        result = [tuple(r) for r in done.all()] if done.returns_rows else []
                    out.append(result)
        finally:
            await engine.dispose()
        return out

    return asyncio.run(go())


def _in_b(sql: str) -> str:
    for column in ("study_instance_uid", "series_instance_uid", "sop_instance_uid"):
        sql = sql.replace(f"({column},", f"(partition_name, {column},", 1)
    return sql.replace("VALUES ('", "VALUES ('hospital-b', '", 1)


def test_existing_rows_move_to_the_default_partition(index_url: str) -> None:
    command.upgrade(_alembic_config(index_url), "0005")
    _run(index_url, [(sql, {"sha": b"\0" * 32} if ":sha" in sql else {}) for sql in ROWS])
    upgrade_sync(index_url)
    [instances, partitions, outbox, both, left] = _run(
        index_url,
        [("SELECT partition_name, sop_instance_uid FROM instances", {})],
        [("SELECT name, read_only FROM partitions", {})],
        [("SELECT key FROM outbox", {})],
        # the same UIDs in another partition: no conflict
        [("INSERT INTO partitions (name) VALUES ('hospital-b')", {}),
         *((_in_b(sql), {"sha": b"\1" * 32} if ":sha" in sql else {}) for sql in ROWS[:3]),
         ("SELECT count(*) FROM instances WHERE sop_instance_uid = '1.2.3.4.5'", {})],
        # deleting the default partition's study cascades to its series and instances only
        # (dicomgw's engine turns SQLite's foreign keys on for every connection)
        [("DELETE FROM studies WHERE partition_name = 'default'", {}),
         ("SELECT i.partition_name, s.partition_name FROM instances i JOIN series s "
          "ON s.series_instance_uid = i.series_instance_uid", {})],
    )
    assert instances == [("default", "1.2.3.4.5")]
    assert partitions == [("default", False)]
    assert outbox == [("1.2.3.4.5",)]
    assert both == [(2,)]
    assert left == [("hospital-b", "hospital-b")]
