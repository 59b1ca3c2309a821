"""Which failures mean that a back end (the index database, the object store) is away for now.

A client can do nothing about such a failure but wait and send the request again, so it is answered
503 with Retry-After (0xA700 for one instance of a STOW request), never as a bare 500 or as a refusal
a forwarder would take as final. Everything else stays what it was: a bug is still a 500.
"""

from __future__ import annotations

import errno
import sqlite3

from dicomgw.errors import IndexUnavailable, StorageUnavailable, Unavailable

# SQLite's primary result codes for a database it cannot use right now: busy, locked, out of memory,
# an I/O error, a file it cannot open, a locking protocol error (a full disk, 13, is _is_full's)
_SQLITE_AWAY = {5, 6, 7, 10, 14, 15}
# PostgreSQL SQLSTATE classes: connection exception, insufficient resources, operator intervention
# (shutdown, "the database system is starting up"), system error
_POSTGRES_AWAY = {"08", "53", "57", "58"}
# An S3 error code or HTTP status that says "later", not "no"
_S3_AWAY = {"SlowDown", "ServiceUnavailable", "RequestTimeout", "InternalError",
            "XMinioServerNotInitialized", "XMinioStorageFull", "XMinioReadQuorum", "XMinioWriteQuorum"}
# a back end that refuses, drops or does not answer, or a disk that fails (a full one is _is_full's)
_AWAY_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EHOSTUNREACH,
                errno.ENETUNREACH, errno.ETIMEDOUT, errno.EPIPE, errno.EIO}


def _causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 16:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _is_index(exc: BaseException) -> bool:
    from sqlalchemy import exc as sa

    if isinstance(exc, sa.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa.TimeoutError | sa.DisconnectionError):  # no pooled connection came free
        return True
    if isinstance(exc, sqlite3.Error):
        return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _SQLITE_AWAY
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate[:2] in _POSTGRES_AWAY


def _is_store(exc: BaseException) -> bool:
    try:
        from botocore.exceptions import ClientError, ConnectionError, HTTPClientError
    except ImportError:  # pragma: no cover - botocore comes with aiobotocore
        return False
    if isinstance(exc, ConnectionError | HTTPClientError):
        return True
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error.get("Code") in _S3_AWAY or int(status or 0) >= 500
    return False


def _is_full(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.Error):
        return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == 13  # SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def as_outage(exc: BaseException) -> Unavailable | None:
    """The 503 that ``exc`` stands for, if it (or what caused it) means a back end is away."""
    for cause in _causes(exc):
        if isinstance(cause, Unavailable):
            return cause
        if _is_full(cause):
            return Unavailable("no space left on the gateway's disk (index, spool or object folder)")
        if _is_index(cause):
            return IndexUnavailable(f"the index database is not answering ({type(cause).__name__})")
        if _is_store(cause):
            return StorageUnavailable(f"the object store is not answering ({type(cause).__name__})")
    for cause in _causes(exc):
        # a connection refused or reset, a timeout: the back end is whichever the stack says. A
        # ConnectionError without an errno too: asyncpg's "unexpected connection_lost() call" when a
        # proxy in front of PostgreSQL accepts and then drops the connection (found by the soak)
        if isinstance(cause, TimeoutError | ConnectionError) or (
                isinstance(cause, OSError) and cause.errno in _AWAY_ERRNOS):
            return Unavailable(f"a back end is not answering ({type(cause).__name__})")
    return None
