"""The embedded loop verifies the originals that are due together, and still tells each one's fate."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest

from tests.dicomdata import make_study, multipart_related


async def test_a_batch_of_verifications_finds_the_damaged_and_the_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dicomgw.config import Settings
    from dicomgw.web.app import build_app
    from dicomgw_ingest.routes import router as ingest_router
    from dicomgw_worker import loop, tasks

    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    settings = Settings()
    app = build_app(settings, [ingest_router], title="STOW, no background loop")
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
            body, ct = multipart_related(make_study(1, 6))
            assert (await c.post("/dicom-web/studies", content=body,
                                 headers={"content-type": ct})).status_code == 200
        runtime = app.state.runtime
        with sqlite3.connect(tmp_path / "index.sqlite3") as db:
            keys = [k for (k,) in db.execute("select object_key from instances order by sop_instance_uid")]
        damaged, gone = tmp_path / "objects" / keys[0], tmp_path / "objects" / keys[1]
        damaged.write_bytes(damaged.read_bytes()[:-4] + b"\xff\xff\xff\xff")
        gone.unlink()
        batches: list[int] = []
        verify_many = tasks.verify_many

        async def counted(runtime_: object, keys_: list[str]) -> dict[str, str]:
            batches.append(len(keys_))
            return await verify_many(runtime_, keys_)  # type: ignore[arg-type]

        monkeypatch.setattr(tasks, "verify_many", counted)
        assert await loop.drain_once(runtime) == 6
        assert batches == [6]  # one batch, one transaction
    with sqlite3.connect(tmp_path / "index.sqlite3") as db:
        status = dict(db.execute("select object_key, verify_status from instances"))
        outbox = sorted(db.execute("select task, key from outbox"))
    assert status[keys[0]] == "mismatch" and status[keys[1]] == "missing"
    assert all(status[k] == "verified" for k in keys[2:])
    assert [task for task, _ in outbox] == ["repair", "repair"]  # and no verification left
