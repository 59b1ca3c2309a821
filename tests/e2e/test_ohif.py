"""OHIF, the viewer radiologists use, against the gateway in a real headless Chromium.

The published OHIF build (npm @ohif/app dist/, installed by `make tools-browser`) is served with an
app-config.js pointing at the gateway; the study list must show the uploaded studies and the first image
of a study must render (non-blank viewport). Screenshots are kept in test-artifacts/.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.dicomdata import make_dataset, multipart_related, to_bytes, uid
from tests.fixtures.gateway import REPO, Gateway, free_port, start_gateway

TOOLS = Path(os.environ.get("DICOMGW_TOOLS", REPO / ".tools")) / "ohif"
HERE = Path(__file__).parent / "ohif"

pytestmark = pytest.mark.browser


class _SpaHandler(http.server.SimpleHTTPRequestHandler):
    """Static files of the OHIF build; unknown paths fall back to index.html (a single-page app)."""

    def send_head(self):  # type: ignore[no-untyped-def]
        path = Path(self.translate_path(self.path))
        if not path.exists():
            self.path = "/index.html"
        return super().send_head()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def ohif_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway of its own, so the study list holds just this test's studies."""
    gw = start_gateway(tmp_path_factory.mktemp("ohif-gateway"))
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def viewer(ohif_gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not (TOOLS / "dist" / "index.html").exists() or not shutil.which("chromium"):
        pytest.fail("the OHIF build or Chromium is missing: run `make tools-browser`")
    site = tmp_path_factory.mktemp("ohif") / "dist"
    shutil.copytree(TOOLS / "dist", site)
    config = (HERE / "app-config.template.js").read_text().replace("__DICOMWEB_ROOT__", ohif_gateway.url)
    (site / "app-config.js").write_text(config)
    port = free_port()
    handler = functools.partial(_SpaHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()


def _ct_series(study_uid: str, name: str, n: int = 3) -> list[bytes]:
    """A small CT series with a bright disc on a ramp: easy to see, easy to tell from blank."""
    series_uid = uid()
    parts = []
    yy, xx = np.mgrid[0:256, 0:256]
    for i in range(n):
        ds = make_dataset(study_uid=study_uid, series_uid=series_uid, patient_name=name,
                          patient_id=f"OHIF-{name}", rows=256, columns=256, instance_number=i + 1,
                          study_description=f"OHIF e2e {name}",
                          extra={"ImagePositionPatient": [0, 0, float(i)],
                                 "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
                                 "PixelSpacing": [1, 1], "SliceThickness": 1,
                                 "RescaleIntercept": 0, "RescaleSlope": 1})
        disc = ((yy - 128) ** 2 + (xx - 128) ** 2 < (60 + 10 * i) ** 2) * 3000
        ds.PixelData = ((xx * 4) + disc).astype(np.uint16).tobytes()
        ds.WindowCenter, ds.WindowWidth = 1500, 3000
        parts.append(to_bytes(ds))
    return parts


def test_ohif_lists_studies_and_renders_an_image(ohif_gateway: Gateway, viewer: str,
                                                artifacts_dir: Path) -> None:
    gateway = ohif_gateway
    names = ["Ohif^Alpha", "Ohif^Beta"]
    studies = []
    for name in names:
        study_uid = uid()
        studies.append(study_uid)
        body, ct = multipart_related(_ct_series(study_uid, name))
        resp = httpx.post(f"{gateway.url}/studies", content=body, headers={"content-type": ct})
        assert resp.status_code == 200, resp.text
    node = shutil.which("node")
    assert node, "node is needed to drive the browser"
    done = subprocess.run(
        [node, str(HERE / "driver.mjs"), str(TOOLS / "driver"), viewer, studies[0], str(artifacts_dir),
         *[n.replace("^", ", ") for n in names]],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    diagnostics = json.dumps({k: result.get(k) for k in ("error", "consoleErrors", "failedRequests",
                                                         "viewer")}, indent=1)[:6000]
    for name in names:
        shown = result["studyList"].get(name.replace("^", ", "))
        assert shown, f"{name} not in the study list\n{diagnostics}"
    assert result["viewer"].get("rendered"), f"no image rendered\n{diagnostics}"
    gateway_failures = [r for r in result["failedRequests"] if gateway.url in r]
    assert not gateway_failures, diagnostics
