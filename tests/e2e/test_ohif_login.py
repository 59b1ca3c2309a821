"""OHIF logging in through a real OpenID provider (Keycloak) to a gateway that requires credentials.

OHIF's own `oidc` configuration (authorization code flow with PKCE) against a Keycloak realm whose
user holds the dicom.read role: the test logs in through Keycloak's login page in headless Chromium,
then sees the study list and the rendered image, every request to the gateway carrying the access
token; without logging in the browser lands on the provider's login page and the archive shows
nothing. The audit trail names the Keycloak user. No token is minted by the test on this path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.dicomdata import multipart_related, uid
from tests.e2e.test_ohif import (
    TOOLS,
    _disc_series,
    assert_disc_rendered,
    assert_frames_served,
    diagnostics,
    run_driver,
    serve_viewer,
)
from tests.fixtures.gateway import Gateway, free_port, start_gateway
from tests.fixtures.keycloak import Keycloak, Realm

pytestmark = pytest.mark.browser
DICOMGW = Path(sys.executable).parent / "dicomgw"


class Setup:
    def __init__(self, gateway: Gateway, realm: Realm, viewer_port: int, study: str, env: dict[str, str]):
        self.gateway, self.realm, self.viewer_port, self.study, self.env = (
            gateway, realm, viewer_port, study, env)

    @property
    def oidc(self) -> list[dict[str, str]]:
        # OHIF's documented `oidc` entry, nothing dicomgw-specific
        return [{"authority": self.realm.issuer, "client_id": self.realm.client_id,
                 "redirect_uri": "/callback", "response_type": "code", "scope": "openid profile",
                 "post_logout_redirect_uri": "/"}]


@pytest.fixture(scope="module")
def setup(keycloak: Keycloak, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    if not (TOOLS / "dist" / "index.html").exists():
        pytest.fail("the OHIF build is missing: run `make tools-browser`")
    viewer_port = free_port()
    realm = keycloak.create_realm(f"ohif-{uuid.uuid4().hex[:6]}", f"http://127.0.0.1:{viewer_port}",
                                  roles=["dicom.read"])
    data = tmp_path_factory.mktemp("ohif-login")
    settings = {"DICOMGW_AUTH_MODE": "required", "DICOMGW_AUTH_ISSUER": realm.issuer,
                "DICOMGW_AUTH_AUDIENCE": '["dicomgw"]', "DICOMGW_AUDIT_FLUSH_SECONDS": "0.2"}
    gateway = start_gateway(data, settings)
    env = {**os.environ, **settings, "DATA_DIR": str(data),
           "DICOMGW_INDEX_URL": f"sqlite+aiosqlite:///{data.resolve() / 'index.sqlite3'}"}
    key = subprocess.run([str(DICOMGW), "keys", "create", "uploader", "--scopes", "dicom.write"],
                         capture_output=True, text=True, env=env, check=True).stdout.strip().splitlines()[-1]
    study = uid()
    body, content_type = multipart_related(_disc_series(study, "Login^Lena", "OHIF login disc"))
    stored = httpx.post(f"{gateway.url}/studies", content=body, timeout=60,
                        headers={"Content-Type": content_type, "Authorization": f"Bearer {key}"})
    assert stored.status_code == 200, stored.text
    yield Setup(gateway, realm, viewer_port, study, env)
    gateway.stop()


def test_ohif_logs_in_through_keycloak_and_shows_the_archive(setup: Setup, artifacts_dir: Path) -> None:
    with serve_viewer(setup.gateway, omit_quotation=True, oidc=setup.oidc, port=setup.viewer_port) as viewer:
        result = run_driver({
            "viewerUrl": viewer, "gatewayUrl": setup.gateway.url, "artifacts": str(artifacts_dir),
            "tag": "login", "login": {"issuer": setup.realm.issuer, "username": setup.realm.username,
                                      "password": setup.realm.password},
            "names": ["Login, Lena"], "studies": [{"uid": setup.study, "label": "login"}],
        })
    assert "error" not in result, diagnostics(result)
    assert result["login"]["atProvider"] and result["login"]["backInViewer"], diagnostics(result)
    assert result["studyList"]["Login, Lena"], diagnostics(result)
    assert result["viewers"][0]["rendered"], diagnostics(result)
    assert_disc_rendered(Path(result["viewers"][0]["canvasScreenshot"]))
    assert_frames_served(result)
    # the access token went with every DICOMweb request, pixel data included
    data_requests = [r for r in result["gatewayRequests"] if r["method"] == "GET"]
    assert data_requests and all(r["bearer"] for r in data_requests), diagnostics(result)
    assert not [r for r in data_requests if r["status"] in (401, 403)], diagnostics(result)
    # and the audit trail names the person who logged in
    trail = subprocess.run([str(DICOMGW), "audit", "--study", setup.study, "--who", setup.realm.username],
                           capture_output=True, text=True, env=setup.env, timeout=60).stdout
    assert "who=radiologist(oidc)" in trail and "transferred(R)" in trail, trail


def test_without_logging_in_the_viewer_shows_nothing_of_the_archive(
        setup: Setup, artifacts_dir: Path) -> None:
    with serve_viewer(setup.gateway, omit_quotation=True, oidc=setup.oidc, port=setup.viewer_port) as viewer:
        result = run_driver({
            "viewerUrl": viewer, "gatewayUrl": setup.gateway.url, "artifacts": str(artifacts_dir),
            "tag": "anonymous", "anonymous": {"issuer": setup.realm.issuer},
        })
    assert "error" not in result, diagnostics(result)
    assert result["anonymous"]["atProvider"], diagnostics(result)
    assert not [r for r in result["gatewayRequests"] if r["status"] == 200], diagnostics(result)
    assert httpx.get(f"{setup.gateway.url}/studies", timeout=30).status_code == 401
