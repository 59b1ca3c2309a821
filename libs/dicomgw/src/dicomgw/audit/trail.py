"""Buffered, batched writing of audit events to the index, and reading them back.

``record`` never waits for the database: it appends to a buffer that a background task flushes every
``flush_seconds`` (identical events of one flush, a viewer's burst of frame requests for instance,
become one row with a count). A failed flush keeps the events and tries again; stopping flushes what
is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from dicomgw.audit.events import AuditEvent
from dicomgw.audit.syslog import SyslogSender
from dicomgw.background import running as in_background
from dicomgw.index.db import session_factory
from dicomgw.index.models import AuditEventRow

log = logging.getLogger("dicomgw.audit")
# events buffered beyond this while the index is unreachable are still kept; the warning says so
BUFFER_WARNING = 100_000


class AuditTrail:
    def __init__(self, engine: AsyncEngine, flush_seconds: float = 1.0,
                 syslog: SyslogSender | None = None) -> None:
        self.sessions: async_sessionmaker[AsyncSession] = session_factory(engine)
        self.flush_seconds = flush_seconds
        self.syslog = syslog
        self._buffer: list[AuditEvent] = []
        # written to the index, waiting for the syslog receiver (kept until it takes them)
        self._unsent: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        self._buffer.append(event)
        if len(self._buffer) == BUFFER_WARNING:
            log.warning("%d audit events wait to be written: is the index reachable?", BUFFER_WARNING)

    async def flush(self) -> int:
        """Write what is buffered; the number of rows written."""
        if not self._buffer:
            return 0
        events, self._buffer = self._buffer, []
        merged: dict[tuple[object, ...], AuditEvent] = {}
        for event in events:
            key = event.coalescing_key()
            first = merged.get(key)
            merged[key] = event if first is None else replace(first, count=first.count + event.count)
        rows = [{"at": e.at, "event": e.event, "action": e.action, "outcome": e.outcome,
                 "who": e.who[:256], "who_kind": e.who_kind, "source": e.source[:64],
                 "method": e.method, "route": e.route[:256],
                 "studies": f" {' '.join(e.studies)} " if e.studies else "", "query": e.query,
                 "detail": e.detail, "count": e.count} for e in merged.values()]
        try:
            async with self.sessions.begin() as session:
                await session.execute(insert(AuditEventRow), rows)
        except Exception:
            # kept, in order, for the next flush
            self._buffer = events + self._buffer
            raise
        if self.syslog is not None:
            self._unsent.extend(merged.values())
        return len(rows)

    async def forward(self) -> None:
        """Send what the index holds and the syslog receiver has not taken yet (the index copy is the
        record: a receiver outage delays forwarding, it loses nothing)."""
        if self.syslog is None or not self._unsent:
            return
        events, self._unsent = self._unsent, []
        try:
            await self.syslog.send(events)
        except Exception:
            self._unsent = events + self._unsent
            if len(self._unsent) > BUFFER_WARNING:
                log.warning("%d audit events wait for the syslog receiver", len(self._unsent))
            raise

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Flush in the background for the lifetime of the context, and once more at its end."""
        async def loop() -> None:
            while True:
                await asyncio.sleep(self.flush_seconds)
                try:
                    await self.flush()
                except Exception as exc:
                    log.warning("audit events not written yet (%s); retrying", type(exc).__name__)
                try:
                    await self.forward()
                except Exception as exc:
                    log.warning("audit events not sent to syslog yet (%s); retrying", type(exc).__name__)

        try:
            async with in_background(loop(), "audit-flush"):
                yield
        finally:
            try:
                await self.flush()
            except Exception:
                log.exception("%d audit events could not be written at shutdown", len(self._buffer))
            try:
                await self.forward()
            except Exception:
                log.warning("%d audit events not sent to syslog at shutdown (they are in the index)",
                            len(self._unsent))

    async def events(self, *, study: str | None = None, who: str | None = None,
                     since: datetime | None = None, limit: int = 10_000) -> list[AuditEvent]:
        query = select(AuditEventRow).order_by(AuditEventRow.at, AuditEventRow.id).limit(limit)
        if study:
            query = query.where(AuditEventRow.studies.contains(f" {study} ", autoescape=True))
        if who:
            query = query.where(AuditEventRow.who == who)
        if since:
            query = query.where(AuditEventRow.at >= since)
        async with self.sessions() as session:
            rows = (await session.scalars(query)).all()
        return [AuditEvent(event=r.event, action=r.action, outcome=r.outcome, who=r.who,
                           who_kind=r.who_kind, source=r.source, method=r.method, route=r.route,
                           studies=tuple(r.studies.split()), query=r.query, detail=r.detail,
                           at=r.at if r.at.tzinfo else r.at.replace(tzinfo=UTC), count=r.count)
                for r in rows]
