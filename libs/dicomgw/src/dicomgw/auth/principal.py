"""The scopes of dicomgw and the Principal a credential resolves to.

``dicom.read`` and ``dicom.write`` hold for every partition; ``dicom.read:hospital-a`` and
``dicom.write:hospital-a`` for that partition only. ``dicom.admin`` is never per partition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dicomgw.partitions import valid_name

READ = "dicom.read"  # QIDO-RS, WADO-RS
WRITE = "dicom.write"  # STOW-RS, DIMSE import jobs
ADMIN = "dicom.admin"  # status, verification, keys, audit
ALL_SCOPES = frozenset({READ, WRITE, ADMIN})
PARTITIONED = frozenset({READ, WRITE})



def valid_scope(scope: str) -> bool:
    """A scope dicomgw grants: one of ALL_SCOPES, or ``dicom.read:NAME`` / ``dicom.write:NAME``."""
    base, _, partition = scope.partition(":")
    return scope in ALL_SCOPES or (base in PARTITIONED and valid_name(partition))


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: an OIDC subject, an API key, or anybody (auth mode `none`)."""

    kind: Literal["oidc", "api-key", "anonymous"]
    # the token's subject (preferred_username when present) or the key's name
    name: str
    scopes: frozenset[str]
    # stable identity: the token's `sub`, or key:<name>
    subject: str = ""

    def may(self, scope: str, partition: str | None = None) -> bool:
        """Whether the credential grants ``scope`` (in ``partition``, for the partitioned scopes)."""
        if scope in self.scopes:
            return True
        return partition is not None and scope in PARTITIONED and f"{scope}:{partition}" in self.scopes

    def sees(self, partition: str) -> bool:
        """Whether the partition exists for this credential: any scope for it, or a global one."""
        return any(s in ALL_SCOPES or s.endswith(f":{partition}") for s in self.scopes)


ANONYMOUS = Principal(kind="anonymous", name="anonymous", scopes=ALL_SCOPES, subject="anonymous")
