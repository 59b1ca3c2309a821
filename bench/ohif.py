"""Time from opening a study in OHIF to its first rendered image, in headless Chromium, per server.

The published OHIF build (`make tools-browser`) is served by nginx, which also proxies /dicom-web to the
server measured: viewer and archive share one origin, as in a hospital's deployment, and Orthanc (which
sends no CORS headers) is measured the same way as the gateway. The browser driver of the end-to-end
tests (tests/e2e/ohif/driver.mjs) opens the study and waits until the viewport shows the image; each
round starts a fresh browser (nothing cached), and the servers take turns.
"""

from __future__ import annotations

import os
import pwd
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.e2e.test_ohif import HERE, TOOLS, run_driver
from tests.fixtures.gateway import free_port

CONF = """
{user}
worker_processes 1;
daemon off;
pid {run}/nginx.pid;
error_log {run}/error.log warn;
events {{ worker_connections 256; }}
http {{
  include /etc/nginx/mime.types;
  access_log off;
  client_body_temp_path {run}/body;
  proxy_temp_path {run}/proxy;
  fastcgi_temp_path {run}/fastcgi;
  uwsgi_temp_path {run}/uwsgi;
  scgi_temp_path {run}/scgi;
  server {{
    listen 127.0.0.1:{port};
    root {dist};
    location = /app-config.js {{ alias {run}/app-config.js; }}
    location /dicom-web/ {{
      proxy_pass {upstream}/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_buffering off;
      proxy_read_timeout 300s;
{extra}
    }}
    location / {{ try_files $uri /index.html; }}
  }}
}}
"""


@contextmanager
def viewer_for(dicomweb_root: str, run: Path, headers: dict[str, str] | None = None) -> Iterator[str]:
    """nginx serving OHIF, configured for /dicom-web on its own origin, proxied to ``dicomweb_root``."""
    run.mkdir(parents=True, exist_ok=True)
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    template = (HERE / "app-config.template.js").read_text()
    (run / "app-config.js").write_text(
        template.replace("__DICOMWEB_ROOT__", f"{origin}/dicom-web")
        .replace("__OMIT_QUOTATION__", "false").replace("__OIDC__", "null"))
    extra = "\n".join(f'      proxy_set_header {k} "{v}";' for k, v in (headers or {}).items())
    # run as root, nginx's workers would drop to "nobody", who cannot read the build or this folder
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    (run / "nginx.conf").write_text(CONF.format(user=user, run=run, port=port, dist=TOOLS / "dist",
                                                upstream=dicomweb_root.rstrip("/"), extra=extra))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx, "-c", str(run / "nginx.conf"), "-p", str(run)],
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(origin + "/app-config.js", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield origin
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def first_image_seconds(servers: dict[str, tuple[str, dict[str, str]]], study_uid: str, tmp: Path,
                        rounds: int = 3) -> dict[str, float]:
    """Median seconds from navigating to the viewer to the first rendered image, per server.

    ``servers`` maps a name to (DICOMweb root, headers nginx must add, e.g. a credential).
    """
    if not (TOOLS / "dist").exists():
        raise RuntimeError("the OHIF build is missing: run `make tools-browser`")
    times: dict[str, list[float]] = {name: [] for name in servers}
    artifacts = tmp / "ohif-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    for n in range(rounds):
        for name, (root, headers) in servers.items():
            with viewer_for(root, tmp / f"nginx-{name}-{n}", headers) as origin:
                result = run_driver({"viewerUrl": origin, "gatewayUrl": f"{origin}/dicom-web",
                                     "artifacts": str(artifacts), "tag": f"bench-{name}-{n}",
                                     "studies": [{"uid": study_uid, "label": f"{name}-{n}"}]})
            [seen] = result["viewers"]
            if not seen.get("rendered"):
                raise RuntimeError(f"OHIF did not render the study from {name}: "
                                   f"{result.get('error') or result.get('consoleErrors')}")
            times[name].append(seen["seconds"])
    return {name: statistics.median(values) for name, values in times.items()}
