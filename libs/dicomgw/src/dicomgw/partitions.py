"""Partitions: separate archives behind one gateway, one per hospital or per research collection.

Every study, series and instance belongs to exactly one partition. ``/dicom-web/...`` is the partition
``default`` (what the gateway always served); ``/dicom-web/partitions/{name}/...`` is any other one, for
STOW-RS, QIDO-RS and WADO-RS alike. The same UIDs may exist in two partitions; index rows are keyed by
(partition, UID), object keys of a named partition live under ``partitions/{name}/``, and background
work names the partition in its key. A credential sees a partition only with a scope for it
(``dicom.read`` for every partition, ``dicom.read:hospital-a`` for one): for the others the partition
does not exist (404), so its name does not leak.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from dicomgw.errors import BadRequest, Conflict, NotFound
from dicomgw.index.models import Partition
from dicomgw.index.repository import DEFAULT, IndexRepository, parse_work_key, work_key

# DNS-label-like: lower-case letters, digits and inner hyphens, so that a name is safe in a URL path,
# an object key and a scope
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def check_name(name: str) -> str:
    if not valid_name(name):
        raise BadRequest("a partition name is 1 to 63 lower-case letters, digits and inner hyphens")
    return name


@dataclass(frozen=True)
class PartitionInfo:
    name: str
    kind: str
    read_only: bool
    description: str
    created_at: datetime | None
    # storage lifecycle (seconds after ingest; None: the deployment's setting; negative: never)
    compact_after_seconds: float | None = None
    cold_after_seconds: float | None = None

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "readOnly": self.read_only,
                "description": self.description,
                "created": self.created_at.isoformat() if self.created_at else None,
                "compactAfterSeconds": self.compact_after_seconds,
                "coldAfterSeconds": self.cold_after_seconds}


def _info(row: Partition) -> PartitionInfo:
    return PartitionInfo(row.name, row.kind, bool(row.read_only), row.description, row.created_at,
                         row.compact_after_seconds, row.cold_after_seconds)


POLICY = {"compactAfterSeconds": "compact_after_seconds", "coldAfterSeconds": "cold_after_seconds"}


def parse_policy(body: dict[str, object]) -> dict[str, float | None]:
    """The lifecycle members of an admin request's JSON body (a number of seconds, or null for the
    deployment's setting); a 400 for anything else."""
    policy: dict[str, float | None] = {}
    for member, column in POLICY.items():
        if member in body:
            value = body[member]
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise BadRequest(f"{member} is a number of seconds (negative: never), or null")
            policy[column] = None if value is None else float(value)
    return policy


class Partitions:
    """The partition table, with a cache of the names that exist (a partition is never removed)."""

    def __init__(self, index: IndexRepository) -> None:
        self.index = index
        self._known: dict[str, PartitionInfo] = {}

    async def get(self, name: str) -> PartitionInfo | None:
        if name in self._known:
            return self._known[name]
        if not valid_name(name):
            return None
        async with self.index.sessions() as session:
            row = (await session.execute(select(Partition).where(Partition.name == name))).scalar()
        if row is None:
            return None
        self._known[name] = info = _info(row)
        return info

    async def create(self, name: str, *, kind: str = "archive", read_only: bool = False,
                     description: str = "", policy: dict[str, float | None] | None = None) -> PartitionInfo:
        check_name(name)
        try:
            async with self.index.sessions.begin() as session:
                session.add(Partition(name=name, kind=kind, read_only=read_only,
                                      description=description[:256], **(policy or {})))
        except IntegrityError:
            raise Conflict(f"a partition named {name} exists already") from None
        info = await self.get(name)
        assert info is not None
        return info

    async def set_policy(self, name: str, policy: dict[str, float | None]) -> PartitionInfo:
        """Change a partition's storage lifecycle; NotFound when there is no such partition."""
        async with self.index.sessions.begin() as session:
            found = (await session.execute(select(Partition).where(Partition.name == name))).scalar()
            if found is None:
                raise NotFound(f"no partition named {name}")
            for column, value in policy.items():
                setattr(found, column, value)
        self._known.pop(name, None)
        info = await self.get(name)
        assert info is not None
        return info

    async def list(self) -> list[PartitionInfo]:
        async with self.index.sessions() as session:
            rows = (await session.execute(select(Partition).order_by(Partition.name))).scalars().all()
        return [_info(r) for r in rows]


__all__ = ["DEFAULT", "PartitionInfo", "Partitions", "check_name", "parse_work_key", "valid_name", "work_key"]
