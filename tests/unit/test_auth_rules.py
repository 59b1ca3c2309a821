"""Pure rules of authentication: where scopes come from in a token, expiry parsing, challenges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dicomgw.auth.authenticator import claim_values, scopes_from
from dicomgw.auth.keys import ApiKeyError
from dicomgw.errors import Forbidden, Unauthorized
from dicomgw_gateway.cli import _loopback
from dicomgw_gateway.keys import parse_expiry

KEYCLOAK_TOKEN = {
    "scope": "openid profile email",
    "realm_access": {"roles": ["offline_access", "dicom.read", "radiologist"]},
    "resource_access": {"ohif": {"roles": ["dicom.write"]}},
}


def test_scopes_come_from_the_oauth_scope_string_and_keycloak_realm_roles() -> None:
    values = claim_values(KEYCLOAK_TOKEN, "scope") + claim_values(KEYCLOAK_TOKEN, "realm_access.roles")
    assert scopes_from(values, {}) == {"dicom.read"}
    assert claim_values(KEYCLOAK_TOKEN, "resource_access.ohif.roles") == ["dicom.write"]
    assert claim_values(KEYCLOAK_TOKEN, "realm_access.missing") == []
    assert claim_values({"scope": 42}, "scope") == []


def test_provider_roles_map_to_scopes_and_unknown_scopes_are_ignored() -> None:
    mapping = {"radiologist": ["dicom.read"], "archivist": ["dicom.write", "superpower"]}
    assert scopes_from(["radiologist", "archivist"], mapping) == {"dicom.read", "dicom.write"}
    assert scopes_from(["dicom.everything", "admin"], mapping) == frozenset()


def test_key_expiry_is_a_duration_or_an_iso_date_in_the_future() -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    assert parse_expiry("90d", now) == now + timedelta(days=90)
    assert parse_expiry("12h", now) == now + timedelta(hours=12)
    assert parse_expiry("2027-01-31", now) == datetime(2027, 1, 31, tzinfo=UTC)
    assert parse_expiry(None, now) is None
    for bad in ("soon", "2020-01-01", "-5d"):
        with pytest.raises(ApiKeyError):
            parse_expiry(bad, now)


def test_refusals_carry_rfc_6750_challenges() -> None:
    assert Unauthorized().headers == {"WWW-Authenticate": 'Bearer realm="dicomgw"'}
    invalid = Unauthorized('the "token" has expired', invalid_token=True).headers["WWW-Authenticate"]
    assert 'error="invalid_token"' in invalid and "'token'" in invalid
    assert 'error="insufficient_scope", scope="dicom.write"' in Forbidden("dicom.write").headers[
        "WWW-Authenticate"]


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                                ("0.0.0.0", False), ("10.1.2.3", False),
                                                ("gateway.example", False)])
def test_anonymous_mode_is_loud_beyond_the_loopback(host: str, loopback: bool) -> None:
    assert _loopback(host) is loopback
