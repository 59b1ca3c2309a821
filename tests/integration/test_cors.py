"""CORS for browser viewers: preflights answered, headers exposed, resources shareable cross-origin."""

from __future__ import annotations

import httpx

from tests.fixtures.gateway import Gateway

ORIGIN = "http://viewer.example:3000"


def test_preflight_allows_the_headers_ohif_sends(gateway: Gateway) -> None:
    resp = httpx.options(
        f"{gateway.url}/studies",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization,accept,content-type",
        },
    )
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] in ("*", ORIGIN)
    allowed = resp.headers["access-control-allow-headers"].lower()
    for header in ("authorization", "accept", "content-type"):
        assert header in allowed
    assert int(resp.headers["access-control-max-age"]) > 0
    assert "POST" in resp.headers["access-control-allow-methods"]


def test_simple_requests_carry_cors_and_corp_headers(gateway: Gateway) -> None:
    resp = httpx.get(f"{gateway.url}/studies", headers={"Origin": ORIGIN})
    assert resp.headers["access-control-allow-origin"] in ("*", ORIGIN)
    assert resp.headers["cross-origin-resource-policy"] == "cross-origin"


def test_origins_can_be_restricted(make_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = make_gateway(env={"DICOMGW_HTTP_CORS_ORIGINS": '["http://allowed.example"]'})
    ok = httpx.options(f"{gw.url}/studies", headers={
        "Origin": "http://allowed.example", "Access-Control-Request-Method": "GET"})
    assert ok.headers.get("access-control-allow-origin") == "http://allowed.example"
    denied = httpx.options(f"{gw.url}/studies", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "GET"})
    assert denied.status_code == 400
    assert "access-control-allow-origin" not in denied.headers
