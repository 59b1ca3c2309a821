"""Migration 0007 on an index that already holds data, on SQLite and PostgreSQL: the QIDO aggregates
kept on study and series rows are filled from the instances and series already indexed, and QIDO-RS
answers with them as it computed them before."""

from __future__ import annotations

from pathlib import Path

from alembic import command

from dicomgw.index.db import _alembic_config, upgrade_sync
from tests.integration.test_migration_0006 import _run

CT, MR = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"


META = ('{"00080016":{"vr":"UI","Value":["%s"]},"00100010":{"vr":"PN","Value":[{"Alphabetic":"A^B"}]},'
        '"00280010":{"vr":"US","Value":[512]},"7FE00010":{"vr":"OW","BulkDataURI":"x"}}')


def _instance(sop: str, series: str, sop_class: str) -> tuple[str, dict[str, object]]:
    return ("INSERT INTO instances (partition_name, sop_instance_uid, series_instance_uid, "
            "study_instance_uid, sop_class_uid, transfer_syntax_uid, object_key, size, sha256, "
            "metadata_json, layout_json, verify_status) VALUES ('default', :sop, :series, '1.2.3', "
            ":cls, '1.2.840.10008.1.2.1', :key, 1, :sha, :meta, '{}', 'pending')",
            {"sop": sop, "series": series, "cls": sop_class, "key": f"originals/{sop}.dcm",
             "sha": b"\0" * 32, "meta": META % sop_class})


ROWS = [
    ("INSERT INTO studies (partition_name, study_instance_uid, attributes_json) "
     "VALUES ('default', '1.2.3', '')", {}),
    ("INSERT INTO studies (partition_name, study_instance_uid, attributes_json) "
     "VALUES ('default', '1.2.9', '')", {}),  # no instances (yet)
    ("INSERT INTO series (partition_name, series_instance_uid, study_instance_uid, modality, "
     "attributes_json) VALUES ('default', '1.2.3.1', '1.2.3', 'CT', '')", {}),
    ("INSERT INTO series (partition_name, series_instance_uid, study_instance_uid, modality, "
     "attributes_json) VALUES ('default', '1.2.3.2', '1.2.3', 'MR', '')", {}),
    _instance("1.2.3.1.1", "1.2.3.1", CT),
    _instance("1.2.3.1.2", "1.2.3.1", CT),
    _instance("1.2.3.2.1", "1.2.3.2", MR),
]


def test_0007_fills_the_aggregates_of_existing_studies_and_series(index_url: str) -> None:
    command.upgrade(_alembic_config(index_url), "0006")
    _run(index_url, ROWS)
    upgrade_sync(index_url)
    studies, series = _run(
        index_url,
        [("SELECT study_instance_uid, num_series, num_instances, modalities, sop_classes FROM studies "
          "ORDER BY study_instance_uid", {})],
        [("SELECT series_instance_uid, num_instances FROM series ORDER BY series_instance_uid", {})])
    assert studies == [("1.2.3", 2, 3, "CT\\MR", f"{CT}\\{MR}"), ("1.2.9", 0, 0, "", "")]
    assert series == [("1.2.3.1", 2), ("1.2.3.2", 1)]
    [(qido,)] = _run(index_url, [("SELECT qido_json FROM instances WHERE sop_instance_uid = '1.2.3.2.1'",
                                  {})])[0]
    # the instance-level attributes QIDO-RS returns, not the patient's name nor the pixel data
    assert qido == f'"00080016":{{"vr":"UI","Value":["{MR}"]}},"00280010":{{"vr":"US","Value":[512]}}'
    command.downgrade(_alembic_config(index_url), "0006")  # and back, for an operator who must
    upgrade_sync(index_url)


def test_concurrent_commits_to_one_study_count_each_other(index_url: str, tmp_path: Path) -> None:
    """Requests adding to one study at the same time (a PACS sends a study over several connections):
    the kept counts are the true ones, on PostgreSQL (row lock) and SQLite (one writer) alike."""
    import asyncio
    import hashlib

    from dicomgw.dicom.parse import parse_instance
    from dicomgw.index.db import create_engine
    from dicomgw.index.repository import IndexRepository, StoredObject
    from tests.dicomdata import make_study

    upgrade_sync(index_url)
    study = make_study(4, 10)  # 4 series of 10
    stored = []
    for i, data in enumerate(study):
        path = tmp_path / f"{i}.dcm"
        path.write_bytes(data)
        stored.append(StoredObject(parse_instance(path), f"originals/{i}.dcm", len(data),
                                   hashlib.sha256(data).digest()))

    async def go() -> list[tuple[object, ...]]:
        engine = create_engine(index_url)
        try:
            index = IndexRepository(engine)
            # ten requests of four instances each, one from every series, all at once
            await asyncio.gather(*(index.commit(stored[k::10]) for k in range(10)))
            async with engine.connect() as conn:
                from sqlalchemy import text

                return [tuple(r) for r in (await conn.execute(text(
                    "SELECT num_series, num_instances FROM studies UNION ALL "
                    "SELECT count(*), sum(num_instances) FROM series"))).all()]
        finally:
            await engine.dispose()

    assert asyncio.run(go()) == [(4, 40), (4, 40)]
