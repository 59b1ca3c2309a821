"""One error hierarchy for dicomgw, each error carrying its HTTP status and DICOM failure reason.

Handlers raise these; a single exception handler (``dicomgw.web.problems``) turns them into
``application/problem+json`` responses, and STOW turns instance-level ones into FailedSOPSequence items.
"""

from __future__ import annotations

from http import HTTPStatus


class DicomgwError(Exception):
    """Base of every error dicomgw raises on purpose."""

    status: int = 500
    title: str = "Internal error"
    # PS3.18 / PS3.4 failure reason used when this error fails one instance of a STOW request
    failure_reason: int = 0x0110

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title

    @property
    def headers(self) -> dict[str, str]:
        """Response headers the error needs (a challenge, for instance)."""
        return {}


# ---- request-level errors ---------------------------------------------------------------------
class BadRequest(DicomgwError):
    status = HTTPStatus.BAD_REQUEST
    title = "Bad request"


class Unauthorized(DicomgwError):
    """No credential, or one that is not valid (RFC 6750 3.1: a challenge says which)."""

    status = HTTPStatus.UNAUTHORIZED
    title = "Unauthorized"

    def __init__(self, detail: str = "", *, invalid_token: bool = False) -> None:
        super().__init__(detail or "a bearer token or API key is required")
        self.invalid_token = invalid_token

    @property
    def headers(self) -> dict[str, str]:
        if not self.invalid_token:
            return {"WWW-Authenticate": 'Bearer realm="dicomgw"'}
        description = self.detail.replace('"', "'")
        return {"WWW-Authenticate":
                f'Bearer realm="dicomgw", error="invalid_token", error_description="{description}"'}


class Forbidden(DicomgwError):
    """A valid credential without the scope the route needs."""

    status = HTTPStatus.FORBIDDEN
    title = "Forbidden"

    def __init__(self, scope: str) -> None:
        super().__init__(f"this credential does not grant the scope {scope}")
        self.scope = scope

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate":
                f'Bearer realm="dicomgw", error="insufficient_scope", scope="{self.scope}"'}


class NotFound(DicomgwError):
    status = HTTPStatus.NOT_FOUND
    title = "Not found"


class MethodNotAllowed(DicomgwError):
    """The resource exists but does not take this method (a read-only partition and STOW-RS)."""

    status = HTTPStatus.METHOD_NOT_ALLOWED
    title = "Method not allowed"

    @property
    def headers(self) -> dict[str, str]:
        return {"Allow": "GET, HEAD"}


class RequestTimeout(DicomgwError):
    """The client stopped sending its request body."""

    status = HTTPStatus.REQUEST_TIMEOUT
    title = "Request timeout"


class Conflict(DicomgwError):
    status = HTTPStatus.CONFLICT
    title = "Conflict"


class NotAcceptable(DicomgwError):
    status = HTTPStatus.NOT_ACCEPTABLE
    title = "Not acceptable"


class UnsupportedMediaType(DicomgwError):
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    title = "Unsupported media type"


class PayloadTooLarge(DicomgwError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    title = "Payload too large"


# Seconds a client is asked to wait before it tries again while a back end is away: long enough for a
# database fail-over or a restarted object store to answer, short enough for a forwarder's queue.
RETRY_AFTER_SECONDS = 5


class RetryLater(DicomgwError):
    """503 with Retry-After, and 0xA700 for one instance: what failed may succeed when sent again."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    failure_reason = 0xA700

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(RETRY_AFTER_SECONDS)}


class Unavailable(RetryLater):
    """A back end the request needs is away for now.

    Retryable by definition: nothing of the request was acknowledged, so sending it again is safe.
    """

    title = "Service unavailable"


class StorageUnavailable(Unavailable):
    title = "Storage unavailable"


class IndexUnavailable(Unavailable):
    title = "Index unavailable"


# ---- instance-level errors (one FailedSOPSequence item each) ---------------------------------
class InstanceRejected(DicomgwError):
    """One instance of a STOW request could not be stored."""

    status = HTTPStatus.CONFLICT
    title = "Instance rejected"
    failure_reason = 0x0110


class CannotUnderstand(InstanceRejected):
    title = "Error: cannot understand"
    failure_reason = 0xC000


class SOPClassNotSupported(InstanceRejected):
    title = "Refused: SOP class not supported"
    failure_reason = 0x0122


class TransferSyntaxNotSupported(InstanceRejected):
    title = "Refused: transfer syntax not supported"
    failure_reason = 0xC122


class StudyInstanceUIDMismatch(InstanceRejected):
    title = "Refused: Study Instance UID does not match the request"
    failure_reason = 0xA900


class DuplicateInstance(InstanceRejected):
    title = "Refused: duplicate SOP Instance UID with different content"
    failure_reason = 0x0111


class OutOfResources(RetryLater, InstanceRejected):
    """One instance could not be stored for want of a back end or of space: worth sending again."""

    title = "Refused: out of resources"
