"""Who may do what, against a real gateway with authentication required.

Every route of the gateway (read from the app itself, so a new route cannot escape the matrix) is called
with every kind of credential: none, an expired token, a not-yet-valid one, one whose claims were
rewritten after signing, one of another issuer, one for another audience, one signed with a key the
provider never published, read-only, write-only (as Keycloak realm roles),
admin-only (ES256), a revoked API key and a valid one. Each answer is exactly what the scope rules say,
never a 500, with a Bearer challenge on 401 and problem+json on both refusals; nothing refused is stored.
The provider is tests/fixtures/issuer.py (discovery and JWKS over HTTP).
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from fastapi.routing import APIRoute

from dicomgw.config import Settings
from dicomgw.web.admin import router as admin_router
from dicomgw.web.collections import router as collections_router
from dicomgw_ingest.routes import router as ingest_router
from dicomgw_query.routes import router as query_router
from dicomgw_retrieve.routes import router as retrieve_router
from tests.dicomdata import make_instance, multipart_related, uid
from tests.fixtures.gateway import Gateway, start_gateway
from tests.fixtures.issuer import Issuer, SigningKey
from tests.fixtures.stack import StackUnderTest
from tests.polling import wait_for

pytestmark = pytest.mark.timeout(600)
READ, WRITE, ADMIN = "dicom.read", "dicom.write", "dicom.admin"
DICOMGW = Path(sys.executable).parent / "dicomgw"
BASE = Settings().http.base_path


@dataclass
class Secured:
    gateway: Gateway
    env: dict[str, str]
    keys: dict[str, str]
    study: str
    series: str
    instance: str

    def keys_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(DICOMGW), "keys", *args], capture_output=True, text=True,
                              env=self.env, timeout=60)
        assert done.returncode == 0, done.stderr
        return done

    def create_key(self, name: str, scopes: str) -> str:
        key = self.keys_cli("create", name, "--scopes", scopes).stdout.strip().splitlines()[-1]
        assert key.startswith("dgw_")
        return key


def _stow(url: str, parts: list[bytes], headers: dict[str, str]) -> httpx.Response:
    body, content_type = multipart_related(parts)
    return httpx.post(f"{url}/studies", content=body, timeout=30,
                      headers={**headers, "Content-Type": content_type,
                               "Accept": "application/dicom+json"})


@pytest.fixture(scope="module")
def secured(issuer: Issuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    data = tmp_path_factory.mktemp("secured")
    env = {"DICOMGW_AUTH_MODE": "required", "DICOMGW_AUTH_ISSUER": issuer.url,
           "DICOMGW_AUTH_AUDIENCE": '["dicomgw"]', "DICOMGW_AUTH_KEY_CACHE_SECONDS": "1",
           "DICOMGW_AUTH_KEY_SECRET": "test-key-secret",
           # one process: each process of a server keeps its own copy of the provider's key set (a
           # token with a key id it lacks makes it refresh), so the rotation test below could reach a
           # process that has not yet seen the new key and still holds the old one
           "DICOMGW_HTTP_WORKERS": "1"}
    gateway = start_gateway(data, env)
    cli_env = {**os.environ, **env, "DATA_DIR": str(data),
               "DICOMGW_INDEX_URL": f"sqlite+aiosqlite:///{data.resolve() / 'index.sqlite3'}"}
    secured = Secured(gateway=gateway, env=cli_env, keys={}, study=uid(), series=uid(), instance="")
    secured.keys["valid"] = secured.create_key("pipeline", "dicom.read,dicom.write")
    secured.keys["revoked"] = secured.create_key("old-forwarder", "dicom.read,dicom.write,dicom.admin")
    secured.keys_cli("revoke", "old-forwarder")
    instance = make_instance(study_uid=secured.study, series_uid=secured.series)
    secured.instance = pydicom.dcmread(io.BytesIO(instance)).SOPInstanceUID
    stored = _stow(gateway.url, [instance], {"Authorization": f"Bearer {secured.keys['valid']}"})
    assert stored.status_code == 200, stored.text
    # a research collection, so that its routes have something to serve
    admin = {"Authorization": f"Bearer {secured.create_key('matrix-admin', 'dicom.admin')}"}
    defined = httpx.post(f"{gateway.root}/admin/collections", json={"name": COLLECTION}, headers=admin)
    assert defined.status_code == 202, defined.text
    wait_for(lambda: httpx.get(f"{gateway.root}/admin/collections/{COLLECTION}", headers=admin)
             .json()["versions"][0]["state"] == "complete", 120)
    yield secured
    gateway.stop()


def _tampered(token: str) -> str:
    """The token with its payload rewritten to grant everything, the signature left as it was."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["scope"] = f"{READ} {WRITE} {ADMIN}"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"{header}.{forged}.{signature}"


def _credentials(issuer: Issuer, secured: Secured) -> dict[str, tuple[str | None, set[str] | None]]:
    """name: (Authorization header, the scopes it grants; None = not a valid credential)."""
    everything = f"{READ} {WRITE} {ADMIN}"
    bearer = "Bearer {}".format
    return {
        "no-token": (None, None),
        "expired": (bearer(issuer.token(lifetime=-600, scope=everything)), None),
        "not-yet-valid": (bearer(issuer.token(lifetime=3600, nbf=int(time.time()) + 600,
                                              scope=everything)), None),
        "tampered": (bearer(_tampered(issuer.token(scope=READ))), None),
        "other-issuer": (bearer(issuer.token(issuer="http://127.0.0.1:1/realms/evil", scope=everything)),
                         None),
        "wrong-audience": (bearer(issuer.token(aud="another-service", scope=everything)), None),
        "unknown-key": (bearer(issuer.token(key=SigningKey.new(), scope=everything)), None),
        "read-only": (bearer(issuer.token(scope=f"openid profile {READ}")), {READ}),
        "write-only": (bearer(issuer.token(scope="openid", realm_access={"roles": [WRITE, "offline"]})),
                       {WRITE}),
        "admin": (bearer(issuer.token(key=issuer.published[1], scope=ADMIN)), {ADMIN}),
        "revoked-key": (bearer(secured.keys["revoked"]), None),
        "valid-key": (bearer(secured.keys["valid"]), {READ, WRITE}),
    }


def _routes() -> list[tuple[str, str]]:
    """Every route of the embedded gateway's routers (the services mount the same routers)."""
    mounted = [(BASE, ingest_router), (BASE, query_router), (BASE, retrieve_router), ("", admin_router),
               ("", collections_router)]
    return sorted((method, prefix + route.path) for prefix, router in mounted for route in router.routes
                  if isinstance(route, APIRoute) for method in route.methods if method != "HEAD")


def _scope_of(method: str, path: str) -> str | None:
    """The scope rules of the gateway, written down independently of its code."""
    if path in ("/healthz", "/readyz", "/metrics"):
        return None
    if path.startswith("/admin/"):
        return ADMIN
    if path.startswith("/collections/"):
        return READ
    assert path.startswith("/dicom-web/"), path
    return WRITE if method == "POST" else READ


ROUTES = _routes()
COLLECTION = "matrix-collection"


def test_every_route_is_in_the_matrix() -> None:
    paths = {path for _, path in ROUTES}
    assert {"/dicom-web/studies", "/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/"
            "{frame_list}", "/admin/status", "/healthz"} <= paths
    assert len(ROUTES) > 25


# routes whose granted answer here is the route's own refusal, past the credential check: the matrix's
# collection has no cleaned image, and its version is complete, not in review
GRANTED_ANSWER = {
    ("GET", "/admin/collections/{name}/versions/{version}/cleaned/{sop_instance_uid}"): {404},
    ("POST", "/admin/collections/{name}/versions/{version}/publish"): {409},
    # the matrix's gateway keeps its objects in a local folder: no presigned URLs to hand out
    ("GET", "/collections/{partition}/versions/{version}/objects"): {404},
}


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_each_route_answers_each_credential_as_the_scope_rules_say(
        issuer: Issuer, secured: Secured, method: str, path: str) -> None:
    scope = _scope_of(method, path)
    concrete = path.replace("{filename:path}", "{filename}").format(
        study=secured.study, series=secured.series, instance=secured.instance, frame_list="1",
        tag="7FE00010", partition=COLLECTION, name=COLLECTION, version="1", filename="manifest.csv",
        sop_instance_uid="2.25.1")
    refused_instances: list[str] = []
    wrong: list[str] = []
    for name, (authorization, granted) in _credentials(issuer, secured).items():
        headers = {"Authorization": authorization} if authorization else {}
        if method == "POST" and path.startswith("/admin/"):
            # the admin API's POSTs take JSON: a new partition, the collection's next version
            body_json = {"name": f"matrix-{uid().replace('.', '')[-12:]}"} if path.endswith("partitions") \
                else {"name": COLLECTION}
            response = httpx.post(secured.gateway.root + concrete, json=body_json, headers=headers,
                                  timeout=30)
        elif method == "POST":
            instance = make_instance(study_uid=secured.study, series_uid=secured.series)
            body, content_type = multipart_related([instance])
            response = httpx.post(secured.gateway.root + concrete, content=body, timeout=30,
                                  headers={**headers, "Content-Type": content_type})
        elif method == "PATCH":  # a partition's storage lifecycle: back to the deployment's setting
            response = httpx.patch(secured.gateway.root + concrete, json={"coldAfterSeconds": None},
                                   headers=headers, timeout=30)
        else:
            response = httpx.get(secured.gateway.root + concrete, headers=headers, timeout=30)
        if scope is None:
            expected = {200}
        elif granted is None:
            expected = {401}
        elif scope in granted:
            expected = GRANTED_ANSWER.get((method, path)) or ({200, 201, 202} if method == "POST" else {200})
        else:
            expected = {403}
        if response.status_code not in expected:
            wrong.append(f"{name}: {response.status_code} (expected {expected}) {response.text[:200]}")
            continue
        if response.status_code in (401, 403):
            assert response.headers["content-type"] == "application/problem+json", name
            challenge = response.headers.get("www-authenticate", "")
            assert challenge.startswith("Bearer"), (name, challenge)
            if response.status_code == 403:
                # in a partition other than the default one, the scope named is dicom.read:NAME
                assert f'scope="{scope}' in challenge
            if method == "POST" and not path.startswith("/admin/"):
                refused_instances.append(pydicom.dcmread(io.BytesIO(instance)).SOPInstanceUID)
    assert not wrong, "\n".join(wrong)
    # nothing a refused request carried was stored
    read = {"Authorization": f"Bearer {secured.keys['valid']}"}
    for sop in refused_instances:
        found = httpx.get(f"{secured.gateway.url}/instances", params={"SOPInstanceUID": sop},
                          headers=read, timeout=30)
        assert found.status_code == 200 and found.json() == [], sop


def test_cors_preflight_needs_no_credential_and_allows_the_authorization_header(secured: Secured) -> None:
    response = httpx.options(f"{secured.gateway.url}/studies", timeout=10, headers={
        "Origin": "http://viewer.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    assert response.status_code == 200
    assert "authorization" in response.headers["access-control-allow-headers"].lower()


def test_a_revoked_key_is_refused_within_seconds(secured: Secured) -> None:
    key = secured.create_key("short-lived", "dicom.read")
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{secured.gateway.url}/studies", headers=headers, timeout=10).status_code == 200
    secured.keys_cli("revoke", "short-lived")
    wait_for(lambda: httpx.get(f"{secured.gateway.url}/studies", headers=headers,
                               timeout=10).status_code == 401, 10)
    listed = secured.keys_cli("list").stdout
    line = next(row for row in listed.splitlines() if row.startswith("short-lived "))
    assert "revoked" in line and line.rstrip().split()[-1] != "-"  # its last use is recorded


def test_keys_are_stored_only_as_hashes(secured: Secured) -> None:
    index = (secured.gateway.data_dir / "index.sqlite3").read_bytes()
    wal = secured.gateway.data_dir / "index.sqlite3-wal"
    stored = index + (wal.read_bytes() if wal.exists() else b"")
    for key in secured.keys.values():
        assert key.encode() not in stored
        assert key[4:20].encode() not in stored


def test_a_key_rotation_at_the_provider_needs_no_restart(issuer: Issuer, secured: Secured) -> None:
    """Last in this module: the provider's old keys stop being published."""
    old = issuer.token(scope=READ)
    url = f"{secured.gateway.url}/studies"
    assert httpx.get(url, headers={"Authorization": f"Bearer {old}"}, timeout=10).status_code == 200
    new_key = issuer.rotate("ES256")
    fresh = issuer.token(key=new_key, scope=READ)

    def accepted() -> Any:
        return httpx.get(url, headers={"Authorization": f"Bearer {fresh}"}, timeout=10).status_code == 200
    # a refresh on an unknown key id happens at most every 10 s
    wait_for(accepted, 30)
    refused = httpx.get(url, headers={"Authorization": f"Bearer {old}"}, timeout=10)
    assert refused.status_code == 401
    assert "unknown key" in refused.json()["detail"]
    assert secured.gateway.process.poll() is None


def test_the_stack_requires_a_credential_on_every_service_and_a_revocation_reaches_them_all(
        stack: StackUnderTest) -> None:
    """`make up`'s configuration: ingest, query and retrieve, behind the router, each refuse anonymous
    requests, accept the key, and refuse it within seconds of `dicomgw keys revoke`."""
    c = stack.config
    key = stack.create_key("revocation-probe", "dicom.read,dicom.write")
    instance = make_instance()
    ds = pydicom.dcmread(io.BytesIO(instance))
    study, series = ds.StudyInstanceUID, ds.SeriesInstanceUID
    body, content_type = multipart_related([instance])
    direct = {"ingest": f"http://127.0.0.1:{c.ingest_port}{c.base_path}",
              "query": f"http://127.0.0.1:{c.query_port}{c.base_path}",
              "retrieve": f"http://127.0.0.1:{c.retrieve_port}{c.base_path}"}

    def calls(headers: dict[str, str]) -> dict[str, int]:
        """Status of a request to each service, directly and through the router."""
        out = {}
        for where, base in (*direct.items(), ("router", c.url)):
            if where in ("ingest", "router"):
                out[f"{where} STOW"] = httpx.post(
                    f"{base}/studies", content=body, timeout=30,
                    headers={**headers, "Content-Type": content_type}).status_code
            if where in ("query", "router"):
                out[f"{where} QIDO"] = httpx.get(f"{base}/studies", params={"StudyInstanceUID": study},
                                                 headers=headers, timeout=30).status_code
            if where in ("retrieve", "router"):
                out[f"{where} WADO"] = httpx.get(f"{base}/studies/{study}/series/{series}/metadata",
                                                 headers=headers, timeout=30).status_code
        return out

    anonymous = calls({})
    assert set(anonymous.values()) == {401}, anonymous
    bearer = {"Authorization": f"Bearer {key}"}
    accepted = calls(bearer)
    assert set(accepted.values()) == {200}, accepted
    subprocess.run([str(DICOMGW), "keys", "revoke", "revocation-probe"], check=True, capture_output=True,
                   env={**os.environ, **c.service_env()}, timeout=60)
    wait_for(lambda: set(calls(bearer).values()) == {401}, 15)


def test_helm_tests_smoke_round_trip_makes_and_revokes_a_key_of_its_own(stack: StackUnderTest) -> None:
    """What the chart's `helm test` pod runs: no key handed to it, one made for the test and revoked."""
    env = {**os.environ, **stack.config.service_env()}
    done = subprocess.run([str(DICOMGW), "smoke", "--url", stack.config.url, "--ephemeral-key"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    anonymous = subprocess.run([str(DICOMGW), "smoke", "--url", stack.config.url], capture_output=True,
                               text=True, env=env, timeout=120)
    assert anonymous.returncode == 1 and "401" in anonymous.stdout
    listed = subprocess.run([str(DICOMGW), "keys", "list"], capture_output=True, text=True, env=env,
                            timeout=60, check=True).stdout
    smoke = [row for row in listed.splitlines() if row.startswith("smoke-test-")]
    assert len(smoke) == 1 and " revoked " in smoke[0], listed


def test_keys_from_the_repository_root_reach_the_running_stack(stack: StackUnderTest,
                                                              tmp_path: Path) -> None:
    """`dicomgw keys create` with no flags and no DICOMGW_* settings, from a folder where `make up`
    runs (var/stack), makes a key the stack accepts."""
    checkout = tmp_path / "checkout"
    (checkout / "var").mkdir(parents=True)
    (checkout / "var" / "stack").symlink_to(stack.run_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMGW_") and k != "DATA_DIR"}
    done = subprocess.run([str(DICOMGW), "keys", "create", "from-the-root", "--scopes",
                           "dicom.read,dicom.write"], capture_output=True, text=True, env=env,
                          cwd=checkout, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "make up" in done.stderr  # it says which index it used
    key = done.stdout.strip().splitlines()[-1]
    response = httpx.get(f"{stack.config.url}/studies", headers={"Authorization": f"Bearer {key}"},
                         timeout=30)
    assert response.status_code == 200

    def audited() -> str:
        return subprocess.run([str(DICOMGW), "audit", "--who", "from-the-root"], capture_output=True,
                              text=True, env=env, cwd=checkout, timeout=60, check=True).stdout

    # the query service wrote who asked, and `dicomgw audit` from the same folder reads it
    assert "query(E)" in wait_for(audited, 20)


def test_a_token_scoped_to_one_partition_sees_that_partition_only(issuer: Issuer, secured: Secured) -> None:
    """Partition scopes from the provider, as a realm role (`dicom.read:NAME`) or in `scope`."""
    admin = {"Authorization": f"Bearer {secured.create_key('partition-admin', 'dicom.admin')}"}
    for name in ("ward-a", "ward-b"):
        made = httpx.post(f"{secured.gateway.root}/admin/partitions", json={"name": name}, headers=admin)
        assert made.status_code == 201, made.text
    role = issuer.token(scope="openid",
                        realm_access={"roles": ["dicom.read:ward-a", "dicom.write:ward-a"]})
    claim = issuer.token(scope="openid dicom.read:ward-a")
    for token in (role, claim):
        headers = {"Authorization": f"Bearer {token}"}
        ok = httpx.get(f"{secured.gateway.url}/partitions/ward-a/studies", headers=headers)
        assert ok.status_code == 200 and ok.json() == []
        for root in (f"{secured.gateway.url}/partitions/ward-b", secured.gateway.url):
            assert httpx.get(f"{root}/studies", headers=headers).status_code == 404
    stored = _stow(f"{secured.gateway.url}/partitions/ward-a", [make_instance()],
                   {"Authorization": f"Bearer {role}"})
    assert stored.status_code == 200, stored.text
    refused = _stow(f"{secured.gateway.url}/partitions/ward-a", [make_instance()],
                    {"Authorization": f"Bearer {claim}"})
    assert refused.status_code == 403
