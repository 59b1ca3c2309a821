"""API keys for machines: created with a name and scopes, shown once, stored as a keyed hash.

A key is ``dgw_`` and 43 characters of a 256-bit random secret (URL-safe base64). The index keeps
HMAC-SHA256(key secret, key) only, so a copy of the database gives no usable key; a look-up is one
indexed equality on that hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from dicomgw.auth.principal import ALL_SCOPES, valid_scope
from dicomgw.index.db import session_factory
from dicomgw.index.models import ApiKey

KEY_PREFIX = "dgw_"
# a key's last use is written at most this often (a busy forwarder would otherwise write per request)
LAST_USED_RESOLUTION = timedelta(seconds=60)
# the secret keys are hashed with when the deployment sets none: the keys' own 256 bits of entropy
# are what protects them; a deployment secret adds a second factor to a stolen database
DEFAULT_SECRET = "dicomgw-api-keys"


class ApiKeyError(ValueError):
    """A key operation the caller must be told about (unknown scope, name taken, no such key)."""


@dataclass(frozen=True)
class ApiKeyInfo:
    name: str
    prefix: str
    scopes: frozenset[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    def usable(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or _aware(self.expires_at) > now)


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything the index stores is UTC
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _info(row: ApiKey) -> ApiKeyInfo:
    return ApiKeyInfo(
        name=row.name, prefix=row.prefix, scopes=frozenset(row.scopes.split()),
        created_at=_aware(row.created_at),
        expires_at=_aware(row.expires_at) if row.expires_at else None,
        last_used_at=_aware(row.last_used_at) if row.last_used_at else None,
        revoked_at=_aware(row.revoked_at) if row.revoked_at else None)


def looks_like_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX)


class ApiKeys:
    """The API keys of one index."""

    def __init__(self, engine: AsyncEngine, secret: str | None = None) -> None:
        self.sessions: async_sessionmaker[AsyncSession] = session_factory(engine)
        self.secret = (secret or DEFAULT_SECRET).encode()

    def hash(self, key: str) -> bytes:
        return hmac.new(self.secret, key.encode(), hashlib.sha256).digest()

    async def create(self, name: str, scopes: set[str] | frozenset[str],
                     expires_at: datetime | None = None) -> tuple[str, ApiKeyInfo]:
        """A new key (returned once, never stored) and its record."""
        unknown = {s for s in scopes if not valid_scope(s)}
        if unknown or not scopes:
            raise ApiKeyError(f"scopes must be among {', '.join(sorted(ALL_SCOPES))} "
                              "(dicom.read and dicom.write also as dicom.read:PARTITION)"
                            + (f"; unknown: {', '.join(sorted(unknown))}" if unknown else ""))
        if not name or len(name) > 128 or not name.isprintable() or " " in name:
            raise ApiKeyError("a key name is 1 to 128 printable characters without spaces")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKey(name=name, key_hash=self.hash(key), prefix=key[: len(KEY_PREFIX) + 6],
                     scopes=" ".join(sorted(scopes)), created_at=datetime.now(UTC),
                     expires_at=expires_at)
        try:
            async with self.sessions.begin() as session:
                session.add(row)
        except IntegrityError:
            raise ApiKeyError(f"a key named {name!r} exists or existed (names are never reused: "
                            "audit events name keys)") from None
        return key, _info(row)

    async def list(self) -> list[ApiKeyInfo]:
        async with self.sessions() as session:
            rows = (await session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id))).all()
        return [_info(row) for row in rows]

    async def revoke(self, name: str) -> ApiKeyInfo:
        async with self.sessions.begin() as session:
            row = await session.scalar(select(ApiKey).where(ApiKey.name == name))
            if row is None:
                raise ApiKeyError(f"no key named {name!r}")
            if row.revoked_at is None:
                row.revoked_at = datetime.now(UTC)
            return _info(row)

    async def find(self, key: str) -> ApiKeyInfo | None:
        """The record of a presented key (whether usable or not), noting its use."""
        digest = self.hash(key)
        async with self.sessions() as session:
            row = await session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
            if row is None:
                return None
            info = _info(row)
        now = datetime.now(UTC)
        if info.usable(now) and (info.last_used_at is None
                                 or now - info.last_used_at >= LAST_USED_RESOLUTION):
            async with self.sessions.begin() as session:
                await session.execute(update(ApiKey).where(ApiKey.key_hash == digest)
                                      .values(last_used_at=now))
        return info
