"""The scopes of dicomgw and the Principal a credential resolves to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

READ = "dicom.read"  # QIDO-RS, WADO-RS
WRITE = "dicom.write"  # STOW-RS, DIMSE import jobs
ADMIN = "dicom.admin"  # status, verification, keys, audit
ALL_SCOPES = frozenset({READ, WRITE, ADMIN})


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: an OIDC subject, an API key, or anybody (auth mode `none`)."""

    kind: Literal["oidc", "api-key", "anonymous"]
    # the token's subject (preferred_username when present) or the key's name
    name: str
    scopes: frozenset[str]
    # stable identity: the token's `sub`, or key:<name>
    subject: str = ""

    def may(self, scope: str) -> bool:
        return scope in self.scopes


ANONYMOUS = Principal(kind="anonymous", name="anonymous", scopes=ALL_SCOPES, subject="anonymous")
