"""The client's errors: one base class, a kind for each thing that can go wrong."""

from __future__ import annotations


class ClientError(Exception):
    """Base of every error this package raises."""


class ArchiveError(ClientError):
    """The archive refused a request or could not be reached (the message says which and why)."""


class ArchiveUnreachable(ArchiveError):
    """No answer from the archive (connection refused, timed out) after the retries."""


class IntegrityError(ClientError):
    """Bytes that do not have the SHA-256 the manifest gives them."""


class GeometryError(ClientError):
    """An object's own geometry is not what the stack was planned from (its metadata): never a volume
    assembled from it."""
