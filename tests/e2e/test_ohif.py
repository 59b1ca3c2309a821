"""OHIF, the viewer radiologists use, against the gateway in a real headless Chromium.

The published OHIF build (npm @ohif/app dist/, installed by `make tools-browser`) is served with an
app-config.js pointing at the gateway; the study list must show the uploaded studies, filter them by
patient name, and the first image of each opened study must render with its pattern. Screenshots are
kept in test-artifacts/ohif-*.png; on failure the browser's console errors, failed requests and every
request to the gateway are printed.
"""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image

from tests.dicomdata import make_dataset, make_study, multipart_related, to_bytes, uid
from tests.fixtures.gateway import REPO, Gateway, free_port, start_gateway

TOOLS = Path(os.environ.get("DICOMGW_TOOLS", REPO / ".tools")) / "ohif"
HERE = Path(__file__).parent / "ohif"

pytestmark = pytest.mark.browser


@dataclass(frozen=True)
class Study:
    label: str
    uid: str
    patient_name: str  # as the study list shows it ("Family, Given")


class _SpaHandler(http.server.SimpleHTTPRequestHandler):
    """The OHIF build as static files, its app-config.js generated; unknown paths get index.html."""

    app_config: bytes = b""

    def do_GET(self) -> None:
        if self.path.split("?")[0] == "/app-config.js":
            self.send_response(200)
            self.send_header("Content-Type", "text/javascript")
            self.send_header("Content-Length", str(len(self.app_config)))
            self.end_headers()
            self.wfile.write(self.app_config)
            return
        if not Path(self.translate_path(self.path)).exists():
            self.path = "/index.html"  # a client-side route such as /viewer?StudyInstanceUIDs=...
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serve_viewer(gateway: Gateway, omit_quotation: bool, oidc: list[dict[str, str]] | None = None,
                 port: int | None = None) -> Iterator[str]:
    """The OHIF build on a free port (or ``port``), configured for the gateway; yields its URL."""
    template = (HERE / "app-config.template.js").read_text()
    config = template.replace("__DICOMWEB_ROOT__", gateway.url).replace(
        "__OMIT_QUOTATION__", "true" if omit_quotation else "false").replace(
        "__OIDC__", json.dumps(oidc))
    handler_class = type("Handler", (_SpaHandler,), {"app_config": config.encode()})
    handler = functools.partial(handler_class, directory=str(TOOLS / "dist"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port or free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def run_driver(plan: dict[str, Any]) -> dict[str, Any]:
    """Run the Node driver (playwright-core + Debian's Chromium) over a plan; its JSON result."""
    node = shutil.which("node")
    assert node, "node is needed to drive the browser"
    plan = {"driverDir": str(TOOLS / "driver"), **plan}
    done = subprocess.run([node, str(HERE / "driver.mjs"), json.dumps(plan)],
                          capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    log = Path(plan["artifacts"]) / f"ohif-{plan['tag']}-requests.json"
    log.write_text(json.dumps(result, indent=1))  # the full record, for reading after a failure
    return result


def diagnostics(result: dict[str, Any]) -> str:
    keys = ("error", "pageErrors", "consoleErrors", "failedRequests", "viewers", "filter", "gatewayRequests")
    return json.dumps({k: result.get(k) for k in keys}, indent=1)[:12000]


def _disc_series(study_uid: str, name: str, description: str, n: int = 3) -> list[bytes]:
    """A small CT series, a bright disc on a dark ramp: easy to see, easy to tell from blank."""
    series_uid = uid()
    yy, xx = np.mgrid[0:256, 0:256]
    parts = []
    for i in range(n):
        ds = make_dataset(study_uid=study_uid, series_uid=series_uid, patient_name=name,
                          patient_id=f"OHIF-{name.split('^')[1]}", rows=256, columns=256,
                          instance_number=i + 1,
                          study_description=description, series_description="Disc on a ramp",
                          extra={"ImagePositionPatient": [0, 0, float(i)],
                                 "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
                                 "PixelSpacing": [1, 1], "SliceThickness": 1,
                                 "RescaleIntercept": 0, "RescaleSlope": 1})
        disc = ((yy - 128) ** 2 + (xx - 128) ** 2 < (60 + 10 * i) ** 2) * 3000
        ds.PixelData = ((xx * 4) + disc).astype(np.uint16).tobytes()
        ds.WindowCenter, ds.WindowWidth = 1500, 3000
        parts.append(to_bytes(ds))
    return parts


def _stow(gateway: Gateway, parts: list[bytes]) -> None:
    body, content_type = multipart_related(parts)
    resp = httpx.post(f"{gateway.url}/studies", content=body, headers={"content-type": content_type},
                      timeout=30)
    assert resp.status_code == 200, resp.text


@pytest.fixture(scope="module")
def ohif_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway of its own: the study list then holds exactly this module's studies, in one page."""
    if not (TOOLS / "dist" / "index.html").exists() or not (TOOLS / "driver" / "node_modules").exists():
        pytest.fail("the OHIF build or playwright-core is missing: run `make tools-browser`")
    if not Path("/usr/bin/chromium").exists():
        pytest.fail("Chromium is missing: run `make tools-browser`")
    gw = start_gateway(tmp_path_factory.mktemp("ohif-gateway"))
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def studies(ohif_gateway: Gateway) -> dict[str, Study]:
    """Three studies uploaded by STOW-RS: two one-series CT discs and a two-series CT+MR study."""
    out = {}
    for label, name in (("alpha", "Ohif^Alpha"), ("beta", "Ohif^Beta")):
        study_uid = uid()
        _stow(ohif_gateway, _disc_series(study_uid, name, f"OHIF e2e {label} disc"))
        out[label] = Study(label, study_uid, name.replace("^", ", "))
    gamma_uid = uid()
    _stow(ohif_gateway, make_study(n_series=2, per_series=2, study_uid=gamma_uid, rows=128, columns=128,
                                   patient_name="Ohif^Gamma", patient_id="OHIF-Gamma",
                                   study_description="OHIF e2e gamma two series"))
    out["gamma"] = Study("gamma", gamma_uid, "Ohif, Gamma")
    return out


def assert_disc_rendered(png: Path) -> None:
    """The viewport shows the disc: a bright centre, the dark low end of the ramp to its left."""
    pixels = np.asarray(Image.open(io.BytesIO(png.read_bytes())).convert("L"), dtype=np.int32)
    height, width = pixels.shape
    cy, cx = height // 2, width // 2
    side = min(height, width)  # the image is fitted to the viewport's short side, centred
    centre = pixels[cy - 5:cy + 5, cx - 5:cx + 5].mean()
    left = pixels[cy - 5:cy + 5, cx - int(side * 0.45):cx - int(side * 0.43)].mean()
    assert centre > 200 and left < 60, f"disc not seen in {png}: centre {centre:.0f}, left {left:.0f}"


def assert_frames_served(result: dict[str, Any]) -> None:
    """OHIF fetched metadata and pixel frames (WADO-RS) from the gateway, every request answered."""
    requests = result["gatewayRequests"]
    frames = [r for r in requests if "/frames/" in r["path"]]
    metadata = [r for r in requests if r["path"].endswith("/metadata")]
    assert frames and metadata, diagnostics(result)
    assert all(r["status"] == 200 for r in frames + metadata), diagnostics(result)
    assert all((r["contentType"] or "").startswith("multipart/related") for r in frames), diagnostics(result)


def test_ohif_lists_filters_and_renders_uploaded_studies(ohif_gateway: Gateway, studies: dict[str, Study],
                                                        artifacts_dir: Path) -> None:
    with serve_viewer(ohif_gateway, omit_quotation=True) as viewer:
        result = run_driver({
            "viewerUrl": viewer, "gatewayUrl": ohif_gateway.url, "artifacts": str(artifacts_dir),
            "tag": "unquoted", "names": [s.patient_name for s in studies.values()],
            "filter": {"query": "Beta", "expect": studies["beta"].patient_name,
                       "absent": studies["alpha"].patient_name},
            "studies": [{"uid": studies[k].uid, "label": k} for k in ("alpha", "gamma")],
        })
    assert "error" not in result, diagnostics(result)
    for study in studies.values():
        assert result["studyList"].get(study.patient_name), f"{study.patient_name} not listed"
    assert result["filter"]["found"] and result["filter"]["absentHidden"], diagnostics(result)
    for seen in result["viewers"]:
        assert seen["rendered"], f"{seen['label']}: no image rendered\n{diagnostics(result)}"
    assert_disc_rendered(Path(result["viewers"][0]["canvasScreenshot"]))
    assert_frames_served(result)
    gateway_failures = [r for r in result["failedRequests"] if ohif_gateway.url in r]
    assert not gateway_failures, diagnostics(result)


def test_ohif_renders_with_quoted_multipart_accept(ohif_gateway: Gateway, studies: dict[str, Study],
                                                  artifacts_dir: Path) -> None:
    """OHIF's default Accept form: multipart/related; type="application/octet-stream"; ..."""
    with serve_viewer(ohif_gateway, omit_quotation=False) as viewer:
        result = run_driver({
            "viewerUrl": viewer, "gatewayUrl": ohif_gateway.url, "artifacts": str(artifacts_dir),
            "tag": "quoted", "studies": [{"uid": studies["beta"].uid, "label": "beta"}],
        })
    assert "error" not in result, diagnostics(result)
    assert result["viewers"][0]["rendered"], diagnostics(result)
    assert_disc_rendered(Path(result["viewers"][0]["canvasScreenshot"]))
    assert_frames_served(result)
    assert any('type="application/octet-stream"' in (r["accept"] or "")
               for r in result["gatewayRequests"] if "/frames/" in r["path"]), diagnostics(result)
    gateway_failures = [r for r in result["failedRequests"] if ohif_gateway.url in r]
    assert not gateway_failures, diagnostics(result)


@pytest.fixture(scope="module")
def real_world_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, Any]]]:
    """A gateway holding pydicom's and deid-data's test files, as they are (each pydicom file with a
    SOP Instance UID of its own, since pydicom reuses them across transfer syntaxes)."""
    from tests.dicomdata import deid_data_files, round_trip_corpus

    gw = start_gateway(tmp_path_factory.mktemp("ohif-real-world"))
    files = [*round_trip_corpus(), *(p.read_bytes() for p in deid_data_files())]
    for data in files:
        body, content_type = multipart_related([data])
        stored = httpx.post(f"{gw.url}/studies", content=body, timeout=120,
                            headers={"content-type": content_type, "accept": "application/dicom+json"})
        assert stored.status_code in (200, 202, 409), stored.text
    yield gw, {"files": len(files)}
    gw.stop()


def test_ohif_lists_and_opens_real_world_files(real_world_gateway: tuple[Gateway, dict[str, Any]],
                                               artifacts_dir: Path) -> None:
    """Real-world files (studies without Modality, odd names, RT, SR, SEG, ECG, multi-frame US) must
    not break OHIF's study list, and a real CT brain must open and render."""
    gw, _ = real_world_gateway
    studies = httpx.get(f"{gw.url}/studies", params={"limit": 101}, timeout=60).json()
    assert len(studies) > 20
    from tests.dicomdata import deid_data_files

    brain = next(p for p in deid_data_files() if p.name == "ctbrain1.dcm")
    ct_brain = str(pydicom.dcmread(brain, stop_before_pixels=True).StudyInstanceUID)
    with serve_viewer(gw, omit_quotation=True) as viewer:
        result = run_driver({
            "viewerUrl": viewer, "gatewayUrl": gw.url, "artifacts": str(artifacts_dir), "tag": "real-world",
            "names": ["CompressedSamples", "Lestrade, G", "SIMPSON, HOMER"],
            "absent": ["Data Source Connection Error"],
            "studies": [{"uid": ct_brain, "label": "ct-brain"}],
        })
    assert "error" not in result, diagnostics(result)
    listed = result["studyList"]
    assert not listed["present"]["Data Source Connection Error"], diagnostics(result)
    for name in ("CompressedSamples", "Lestrade, G", "SIMPSON, HOMER"):
        assert listed[name], f"{name} not listed\n{diagnostics(result)}"
    assert result["viewers"][0]["rendered"], diagnostics(result)
    assert not result["pageErrors"], diagnostics(result)
    assert not [r for r in result["failedRequests"] if gw.url in r], diagnostics(result)


def test_ohif_opens_a_de_identified_collection(ohif_gateway: Gateway, studies: dict[str, Study],
                                              artifacts_dir: Path) -> None:
    """A research collection of one study, opened in OHIF through the collection's partition root:
    the study list shows the pseudonym and not the patient, and the de-identified images render."""
    from dataclasses import replace

    from tests.polling import wait_for

    name = f"ohif-deid-{uid()[-8:]}"
    defined = httpx.post(f"{ohif_gateway.root}/admin/collections", timeout=30,
                         json={"name": name, "query": "PatientID=OHIF-Alpha"})
    assert defined.status_code == 202, defined.text
    wait_for(lambda: httpx.get(f"{ohif_gateway.root}/admin/collections/{name}").json()["versions"][0]
             ["state"] == "complete", 120)
    collection = replace(ohif_gateway, url=f"{ohif_gateway.url}/partitions/{name}")
    [study] = httpx.get(f"{collection.url}/studies", timeout=30).json()
    pseudonym = study["00100010"]["Value"][0]["Alphabetic"]
    assert pseudonym.startswith("P-") and study["0020000D"]["Value"][0] != studies["alpha"].uid
    with serve_viewer(collection, omit_quotation=True) as viewer:
        result = run_driver({
            "viewerUrl": viewer, "gatewayUrl": collection.url, "artifacts": str(artifacts_dir),
            "tag": "de-identified", "names": [pseudonym], "absent": [studies["alpha"].patient_name],
            "studies": [{"uid": study["0020000D"]["Value"][0], "label": "de-identified alpha"}],
        })
    assert "error" not in result, diagnostics(result)
    assert result["studyList"][pseudonym], diagnostics(result)
    assert not result["studyList"]["present"][studies["alpha"].patient_name], diagnostics(result)
    assert result["viewers"][0]["rendered"], diagnostics(result)
    assert_disc_rendered(Path(result["viewers"][0]["canvasScreenshot"]))
    assert_frames_served(result)
    # (the driver records the requests under the collection's root, relative to it)
    assert not [r for r in result["failedRequests"] if ohif_gateway.root in r], diagnostics(result)
