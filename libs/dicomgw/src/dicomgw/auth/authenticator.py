"""Turns a request's ``Authorization`` header into a Principal, one mechanism for every service.

``Bearer dgw_...`` is an API key, looked up in the index (the answer reused for ``key_cache_seconds``,
which bounds how long a revoked key keeps working); any other bearer token must be an access token of
the configured OpenID provider. Scopes come from the token's configured claims (``scope``,
Keycloak's ``realm_access.roles``...) and the optional role-to-scope map.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from dicomgw.auth.keys import ApiKeyInfo, ApiKeys, looks_like_key
from dicomgw.auth.oidc import InvalidToken, OidcVerifier
from dicomgw.auth.principal import ANONYMOUS, Principal, valid_scope
from dicomgw.config import AuthSettings
from dicomgw.errors import Unauthorized

# look-ups kept at most (unknown keys included, so that guessing cannot grow it without bound)
KEY_CACHE_SIZE = 10_000


def claim_values(claims: dict[str, Any], path: str) -> list[str]:
    """The strings at a dotted claim path: a space-delimited string (OAuth `scope`) or a list."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return []
        value = value[part]
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def scopes_from(values: Iterable[str], scope_map: dict[str, list[str]]) -> frozenset[str]:
    granted: set[str] = set()
    for value in values:
        if valid_scope(value):
            granted.add(value)
        granted.update(s for s in scope_map.get(value, ()) if valid_scope(s))
    return frozenset(granted)


class Authenticator:
    def __init__(self, settings: AuthSettings, keys: ApiKeys, oidc: OidcVerifier | None = None) -> None:
        self.settings = settings
        self.keys = keys
        self.oidc = oidc
        self._cache: dict[bytes, tuple[float, ApiKeyInfo | None]] = {}

    @classmethod
    def from_settings(cls, settings: AuthSettings, engine: AsyncEngine) -> Authenticator:
        oidc = None
        if settings.issuer:
            oidc = OidcVerifier(settings.issuer, audience=settings.audience,
                                algorithms=settings.algorithms, leeway_seconds=settings.leeway_seconds,
                                jwks_url=settings.jwks_url)
        return cls(settings, ApiKeys(engine, settings.key_secret), oidc)

    async def close(self) -> None:
        if self.oidc is not None:
            await self.oidc.close()

    @property
    def required(self) -> bool:
        return self.settings.mode != "none"

    async def authenticate(self, authorization: str | None) -> Principal:
        if not self.required:
            return ANONYMOUS
        if not authorization:
            raise Unauthorized()
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("use `Authorization: Bearer <token or API key>`")
        if looks_like_key(token):
            return await self._key_principal(token)
        if self.oidc is None:
            raise Unauthorized("only API keys are accepted here: no OpenID provider is configured",
                               invalid_token=True)
        try:
            claims = await self.oidc.claims(token)
        except InvalidToken as exc:
            raise Unauthorized(str(exc), invalid_token=True) from None
        values = [v for path in self.settings.scope_claims for v in claim_values(claims, path)]
        subject = str(claims.get("sub", ""))
        return Principal(kind="oidc", name=str(claims.get("preferred_username") or subject),
                         subject=subject, scopes=scopes_from(values, self.settings.scope_map))

    async def _key_principal(self, key: str) -> Principal:
        digest = self.keys.hash(key)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            info = cached[1]
        else:
            info = await self.keys.find(key)
            if len(self._cache) >= KEY_CACHE_SIZE:
                self._cache.clear()
            self._cache[digest] = (now + self.settings.key_cache_seconds, info)
        if info is None:
            raise Unauthorized("unknown API key", invalid_token=True)
        if info.revoked_at is not None:
            raise Unauthorized("the API key is revoked", invalid_token=True)
        if not info.usable(datetime.now(UTC)):
            raise Unauthorized("the API key has expired", invalid_token=True)
        return Principal(kind="api-key", name=info.name, subject=f"key:{info.name}", scopes=info.scopes)
