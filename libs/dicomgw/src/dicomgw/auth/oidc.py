"""OIDC access tokens (JWT) checked against the issuer's signing keys, found by discovery.

The key set is fetched on first use and cached; a token naming a key id the cache lacks triggers one
refresh (at most one every ``min_refresh_seconds``, so random key ids cannot hammer the provider), which
is how a key rotation at the provider is picked up without a restart. PyJWT does the parsing and the
checks (signature, ``iss``, ``aud``, ``exp``, ``nbf`` with a leeway); nothing here reads a JWT by hand.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
import jwt

log = logging.getLogger("dicomgw.auth")


class InvalidToken(Exception):
    """The token is not acceptable; the message says why (safe to send back: no token content)."""


class OidcVerifier:
    def __init__(self, issuer: str, *, audience: list[str] | None = None, algorithms: list[str],
                 leeway_seconds: int = 60, jwks_url: str | None = None,
                 min_refresh_seconds: float = 10.0, max_age_seconds: float = 3600.0,
                 client: httpx.AsyncClient | None = None) -> None:
        # compared exactly, as OpenID Connect Discovery 4.3 asks
        self.issuer = issuer
        self.audience = list(audience or [])
        # symmetric algorithms would let anybody holding the public key sign: never accepted
        self.algorithms = [a for a in algorithms if not a.upper().startswith("HS") and a != "none"]
        self.leeway = leeway_seconds
        self.jwks_url = jwks_url
        self.min_refresh = min_refresh_seconds
        self.max_age = max_age_seconds
        self._client = client
        self._own_client = client is None
        self._keys: dict[str, jwt.PyJWK] = {}
        # the algorithm a key is restricted to, where the key set says
        self._key_algorithms: dict[str, str] = {}
        self._fetched = 0.0
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        if self._client is not None and self._own_client:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(5.0), follow_redirects=True)
        return self._client

    async def _discover_jwks_url(self) -> str:
        if self.jwks_url:
            return self.jwks_url
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        response = await self._http().get(url)
        response.raise_for_status()
        document = response.json()
        if document.get("issuer") != self.issuer:
            raise InvalidToken("the provider's discovery document names another issuer")
        self.jwks_url = str(document["jwks_uri"])
        return self.jwks_url

    async def _refresh(self) -> None:
        url = await self._discover_jwks_url()
        response = await self._http().get(url)
        response.raise_for_status()
        keys: dict[str, jwt.PyJWK] = {}
        algorithms: dict[str, str] = {}
        for item in response.json().get("keys", []):
            if item.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(item)
            except (jwt.PyJWKError, jwt.InvalidKeyError) as exc:
                log.warning("skipping a signing key of the provider: %s", exc)
                continue
            keys[str(item.get("kid", ""))] = key
            if item.get("alg"):
                algorithms[str(item.get("kid", ""))] = str(item["alg"])
        self._keys, self._key_algorithms = keys, algorithms
        self._fetched = time.monotonic()
        log.info("loaded %d signing key(s) of %s", len(keys), self.issuer)

    def _due(self, kid: str) -> bool:
        age = time.monotonic() - self._fetched
        return age > self.max_age or (kid not in self._keys and age >= self.min_refresh)

    async def _key(self, kid: str) -> jwt.PyJWK:
        if self._due(kid):
            async with self._lock:
                if self._due(kid):  # not done meanwhile by the request holding the lock
                    try:
                        await self._refresh()
                    except (httpx.HTTPError, ValueError, KeyError) as exc:
                        # a provider that is down is asked again after min_refresh, not per request
                        self._fetched = time.monotonic()
                        log.warning("could not fetch the signing keys of %s: %s", self.issuer, exc)
                        if not self._keys:
                            raise InvalidToken("the provider's signing keys cannot be fetched") from exc
        key = self._keys.get(kid)
        if key is None and not kid and len(self._keys) == 1:
            key = next(iter(self._keys.values()))
        if key is None:
            raise InvalidToken("the token is signed with an unknown key")
        return key

    async def claims(self, token: str) -> dict[str, Any]:
        """The verified claims of an access token, or InvalidToken."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as exc:
            raise InvalidToken("the token is not a JWT") from exc
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            raise InvalidToken(f"tokens signed with {algorithm} are not accepted")
        kid = str(header.get("kid", ""))
        key = await self._key(kid)
        if self._key_algorithms.get(kid, algorithm) != algorithm:
            raise InvalidToken("the token's algorithm is not its key's")
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key=key.key, algorithms=[algorithm],
                audience=self.audience or None, issuer=self.issuer, leeway=self.leeway,
                options={"require": ["exp", "iss"], "verify_aud": bool(self.audience)})
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("the token has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise InvalidToken("the token is not valid yet") from exc
        except jwt.InvalidIssuerError as exc:
            raise InvalidToken("the token is from another issuer") from exc
        except jwt.InvalidAudienceError as exc:
            raise InvalidToken("the token is meant for another audience") from exc
        except jwt.InvalidSignatureError as exc:
            raise InvalidToken("the token's signature does not verify") from exc
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"the token is not valid: {exc}") from exc
        return claims
