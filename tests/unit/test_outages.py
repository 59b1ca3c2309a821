"""Which failures are a back end away (503, Retry-After) and which stay what they are."""

from __future__ import annotations

import errno
import sqlite3

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from sqlalchemy import exc as sa

from dicomgw.errors import (
    CannotUnderstand,
    IndexUnavailable,
    NotFound,
    OutOfResources,
    StorageUnavailable,
    Unavailable,
)
from dicomgw.ingest import PartResult, StowOutcome
from dicomgw.outages import as_outage


def _sqlite(code: int, message: str) -> sqlite3.Error:
    error = sqlite3.OperationalError(message)
    error.sqlite_errorcode = code  # type: ignore[attr-defined]
    return error


def _s3(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def _wrapped(cause: BaseException) -> BaseException:
    """As SQLAlchemy or aiobotocore raise it: another exception, caused by the back end's."""
    try:
        try:
            raise cause
        except BaseException as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize("error, kind", [
    (_sqlite(5, "database is locked"), IndexUnavailable),
    (_sqlite(13, "database or disk is full"), Unavailable),  # the disk, whichever uses it
    (OSError(errno.ENOSPC, "No space left on device"), Unavailable),
    (_sqlite(10 | (3 << 8), "disk I/O error"), IndexUnavailable),  # an extended code of SQLITE_IOERR
    (_PgError("57P03"), IndexUnavailable),  # the database system is starting up
    (_PgError("08006"), IndexUnavailable),  # connection failure
    (sa.TimeoutError("QueuePool limit reached"), IndexUnavailable),
    (sa.OperationalError("SELECT 1", {}, Exception("gone"), connection_invalidated=True), IndexUnavailable),
    (EndpointConnectionError(endpoint_url="http://minio:9000"), StorageUnavailable),
    (ReadTimeoutError(endpoint_url="http://minio:9000"), StorageUnavailable),
    (_s3("SlowDown", 503), StorageUnavailable),
    (_s3("XMinioServerNotInitialized", 503), StorageUnavailable),
    (_s3("InternalError", 500), StorageUnavailable),
    (ConnectionRefusedError(111, "Connect call failed"), Unavailable),
    # asyncpg, when a proxy in front of PostgreSQL accepts the connection and then drops it
    (ConnectionError("unexpected connection_lost() call"), Unavailable),
    (TimeoutError(), Unavailable),
    (StorageUnavailable("already said"), StorageUnavailable),
])
def test_a_back_end_away_is_a_503_to_retry(error: BaseException, kind: type[Unavailable]) -> None:
    for raised in (error, _wrapped(error)):
        outage = as_outage(raised)
        assert type(outage) is kind, raised
        assert outage.status == 503 and outage.failure_reason == 0xA700
        assert int(outage.headers["Retry-After"]) > 0


@pytest.mark.parametrize("error", [
    _sqlite(1, "no such table: studies"),  # a bug, not an outage
    _sqlite(19, "UNIQUE constraint failed"),
    _PgError("42P01"),  # undefined table
    _PgError("23505"),  # unique violation
    sa.OperationalError("SELECT 1", {}, Exception("syntax"), connection_invalidated=False),
    _s3("NoSuchKey", 404),
    _s3("AccessDenied", 403),
    KeyError("x"),
    FileNotFoundError(2, "No such file"),
    NotFound("no such study"),
])
def test_other_failures_stay_what_they_are(error: BaseException) -> None:
    assert as_outage(error) is None
    assert as_outage(_wrapped(error)) is None


def test_stow_is_503_only_when_nothing_was_stored_and_a_retry_may_store_it() -> None:
    def outcome(*errors: Exception | None) -> StowOutcome:
        return StowOutcome([PartResult(index=i, error=e) for i, e in enumerate(errors)])  # type: ignore[arg-type]

    away, bad = OutOfResources("store away"), CannotUnderstand("not DICOM")
    assert outcome(None, None).status_code == 200
    assert outcome(None, away).status_code == 202
    assert outcome(away, away).status_code == 503
    assert outcome(away, bad).status_code == 503  # the good one may be stored on the retry
    assert outcome(bad, bad).status_code == 409  # no retry will change that
