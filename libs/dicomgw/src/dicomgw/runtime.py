"""The long-lived clients one process needs (index engine, object stores), opened and closed together."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from dicomgw.audit import AuditTrail
from dicomgw.audit.syslog import SyslogSender
from dicomgw.auth import Authenticator
from dicomgw.config import Settings
from dicomgw.index.db import create_engine, upgrade
from dicomgw.index.repository import IndexRepository
from dicomgw.partitions import Partitions
from dicomgw.storage import ObjectStore, open_store
from dicomgw.storage.tiered import TieredStore


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    index: IndexRepository
    store: ObjectStore
    auth: Authenticator
    audit: AuditTrail
    partitions: Partitions
    # the second copy of every original, when one is configured
    replica: ObjectStore | None = None
    # the cold tier, when one is configured (``store`` is then a TieredStore reading from both)
    cold: ObjectStore | None = None


@asynccontextmanager
async def open_runtime(settings: Settings, *, migrate: bool = True) -> AsyncIterator[Runtime]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.spool_path.mkdir(parents=True, exist_ok=True)
    if migrate:
        await upgrade(settings.index_url)
    engine = create_engine(settings.index_url, pool_size=settings.index.pool_size)
    store = await open_store(settings.storage, settings.objects_path)
    cold = await open_store(settings.cold, settings.cold_path) if settings.cold.enabled else None
    if cold is not None:
        store = TieredStore(store, cold)
    replica = (await open_store(settings.replica, settings.replica_path)
               if settings.replica.enabled else None)
    # New originals owe a verification, and a replication when there is a replica.
    new_work = ("verify", "replicate") if replica is not None else ("verify",)
    auth = Authenticator.from_settings(settings.auth, engine)
    syslog = (SyslogSender(settings.audit.syslog_url, settings.audit.source_id)
              if settings.audit.syslog_url else None)
    index = IndexRepository(engine, new_work)
    try:
        yield Runtime(settings=settings, engine=engine, index=index, store=store, auth=auth,
                      audit=AuditTrail(engine, settings.audit.flush_seconds, syslog),
                      partitions=Partitions(index), replica=replica, cold=cold)
    finally:
        await auth.close()
        if replica is not None:
            await replica.close()
        await store.close()  # a TieredStore closes its cold store too
        await engine.dispose()
