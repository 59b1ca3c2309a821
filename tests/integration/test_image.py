"""The service images, built from the Dockerfile and run from the chart's own manifests, answer DICOMweb.

No Docker engine runs here and no registry is reachable: scripts/build-image.sh (make tools-image) builds
the Dockerfile's targets with Debian's podman on a Debian bookworm base made by debootstrap, cached under
.tools/podman. The chart is rendered by `helm template` with the images pointed at those local tags and
the index and object store at the session's real PostgreSQL and MinIO; the migration Job, then the
ingest, query and retrieve Deployments with their ConfigMap and Secret, are played by `podman kube play`.
A generated instance is stored by STOW-RS, found by QIDO-RS and retrieved byte-exact by WADO-RS, through
the containers.

Only what `podman kube play` (podman 4.3, Debian bookworm) cannot do as a cluster would is changed in the
rendered manifests; every patch says why (see `_adapt`).
"""

from __future__ import annotations

import base64
import copy
import io
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import yaml

from tests.dicomdata import make_instance, multipart_related, split_multipart
from tests.fixtures.gateway import REPO, free_port
from tests.fixtures.minio import PASSWORD, USER, MinioServer
from tests.fixtures.postgres import PostgresServer
from tests.polling import wait_for

TOOLS = Path(os.environ.get("DICOMGW_TOOLS", REPO / ".tools"))
HELM = TOOLS / "bin" / "helm"
CHART = REPO / "deploy" / "helm" / "dicomgw"
BUILD = REPO / "scripts" / "build-image.sh"
KUBE_VERSION = "1.31.0"
REPOSITORY, TAG = "localhost/dicomgw", "test"
SERVICES = ("ingest", "query", "retrieve")
# Networking. In a cluster every pod has its own network namespace and reaches the database and the
# object store by address. Here PostgreSQL and MinIO are the session's fixtures, listening on the host's
# loopback only. Each pod is given slirp4netns with allow_host_loopback: its own network namespace (each
# service on the chart's port 8080, as in a cluster) in which 10.0.2.2 is the host's 127.0.0.1, so the
# values point the index and the store at 10.0.2.2 and nothing ever listens beyond the loopback.
# (hostNetwork would need a PORT per service and would bind the images' 0.0.0.0 on every host interface;
# podman's default bridge cannot reach services bound to the host's 127.0.0.1.)
POD_NETWORK = "slirp4netns:allow_host_loopback=true"
HOST_FROM_POD = "10.0.2.2"
ANY_TS = 'multipart/related; type="application/dicom"; transfer-syntax=*'

pytestmark = [pytest.mark.minio, pytest.mark.postgres,
              # the first run debootstraps the base and builds the images (minutes); later runs are cached
              pytest.mark.timeout(1800)]


def _podman_env() -> dict[str, str]:
    """podman pointed at the checkout's own configuration and storage (what build-image.sh --env says)."""
    line = subprocess.run(["bash", str(BUILD), "--env"], capture_output=True, text=True,
                          check=True).stdout.strip()
    pairs = dict(item.split("=", 1) for item in line.removeprefix("export ").split())
    return {**os.environ, **pairs}


@dataclass
class Podman:
    env: dict[str, str] = field(default_factory=_podman_env)

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True,
                 timeout: float = 300) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["podman", *args], input=stdin, capture_output=True, text=True,
                              env=self.env, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({done.returncode}):\n"
                                 f"{done.stdout}\n{done.stderr}")
        return done

    def logs(self, pod: str) -> str:
        names = self("ps", "-a", "--filter", f"pod={pod}", "--format", "{{.Names}}", check=False)
        out = []
        for name in names.stdout.split():
            if name.endswith("-infra"):
                continue
            log = self("logs", "--tail", "60", name, check=False)
            out.append(f"--- {name}:\n{log.stdout}{log.stderr}")
        return "\n".join(out)


@pytest.fixture(scope="module")
def podman() -> Podman:
    """The images built (cached) and a usable podman, or a failure saying what is missing."""
    done = subprocess.run(["bash", str(BUILD), *SERVICES, "worker"], capture_output=True, text=True,
                          env={**os.environ, "DICOMGW_IMAGE_REPOSITORY": REPOSITORY,
                               "DICOMGW_IMAGE_TAG": TAG}, timeout=1700)
    if done.returncode != 0:
        pytest.fail("could not build the images with podman (scripts/build-image.sh, `make tools-image`):\n"
                    f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    podman = Podman()
    info = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False)
    if info.returncode != 0:
        pytest.fail(f"podman is not usable here:\n{info.stderr}")
    return podman


def render(values: dict[str, Any], release: str, tmp_path: Path) -> list[dict[str, Any]]:
    if not HELM.exists():
        pytest.fail("Helm is not built: run `make tools-helm`")
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    done = subprocess.run([str(HELM), "template", release, str(CHART), "--kube-version", KUBE_VERSION,
                           "-f", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return copy.deepcopy(doc)


def _adapt(pod_spec: dict[str, Any], host_port: int | None = None) -> None:
    """What podman kube play cannot do as a cluster does, changed in a rendered pod spec."""
    for container in pod_spec["containers"]:
        # podman turns an httpGet probe into `curl -f http://localhost:<port>/...` run *inside* the
        # container (the kubelet probes from outside) with 0 for a named port, and restarts the container
        # when it fails: the images, like python:3.11-slim, have no curl. The test waits on /healthz and
        # /readyz itself, as the startup and readiness probes would.
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            container.pop(probe, None)
        # no Service and no cluster network in front of the pods: the service port is published to the
        # test, on the host's loopback only (podman publishes a containerPort on every interface unless
        # told a hostIP)
        for port in container.get("ports", []):
            if host_port is not None:
                port.update(hostPort=host_port, hostIP="127.0.0.1")


def _podman_secret(podman: Podman, secret: dict[str, Any], created: list[str]) -> None:
    """A rendered Secret as the podman secret that secretKeyRef reads.

    podman 4.3 stores a played `kind: Secret` as its YAML text but reads secretKeyRef values as the JSON
    of the Secret's `data` (base64 values), so a played Secret cannot be referenced; the same keys and
    values are created here in the form podman reads.
    """
    data = {k: base64.b64encode(v.encode()).decode() for k, v in secret.get("stringData", {}).items()}
    data.update(secret.get("data", {}))
    name = secret["metadata"]["name"]
    podman("secret", "create", name, "-", stdin=json.dumps(data))
    created.append(name)


def _job_as_pod(job: dict[str, Any]) -> dict[str, Any]:
    """podman 4.3 plays Pods and Deployments, not Jobs: the Job's pod template, as its controller would
    create it (the Helm hook order, migrations before the services, is kept by playing it first)."""
    template = job["spec"]["template"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": job["metadata"]["name"], "labels": template["metadata"]["labels"]},
            "spec": template["spec"]}


@dataclass
class Played:
    podman: Podman
    folder: Path
    files: list[Path] = field(default_factory=list)
    pods: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)

    def play(self, name: str, docs: list[dict[str, Any]]) -> None:
        path = self.folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        self.files.append(path)
        for doc in docs:
            if doc["kind"] == "Pod":
                self.pods.append(doc["metadata"]["name"])
            elif doc["kind"] == "Deployment":
                self.pods.append(f"{doc['metadata']['name']}-pod-0")  # podman's name of its one pod
        self.podman("kube", "play", "--network", POD_NETWORK, str(path))

    def down(self) -> None:
        for path in reversed(self.files):
            self.podman("kube", "down", str(path), check=False)
        for pod in self.pods:
            self.podman("pod", "rm", "--force", "--ignore", pod, check=False)
        for name in self.secrets:
            self.podman("secret", "rm", name, check=False)


@pytest.fixture
def played(podman: Podman, tmp_path: Path) -> Iterator[Played]:
    state = Played(podman, tmp_path)
    try:
        yield state
    finally:
        state.down()


def _exited(podman: Podman, container: str) -> list[int]:
    """[exit code] once the container has exited for good, else [] (not yet)."""
    state = json.loads(podman("inspect", "--format", "{{json .State}}", container).stdout)
    return [int(state["ExitCode"])] if state["Status"] in ("exited", "stopped") else []


def _ready(url: str) -> bool:
    return httpx.get(url, timeout=3).status_code == 200


def test_images_serve_stow_qido_wado_from_the_charts_manifests(
        podman: Podman, played: Played, postgres_server: PostgresServer, minio_server: MinioServer,
        tmp_path: Path) -> None:
    release = f"img-{uuid.uuid4().hex[:6]}"
    database = postgres_server.create_database(migrate=False)  # the chart's migration Job migrates it
    bucket = f"img-{uuid.uuid4().hex[:12]}"
    values = {
        "image": {"repository": REPOSITORY, "tag": TAG, "pullPolicy": "Never"},
        "index": {"url": database.replace("@127.0.0.1:", f"@{HOST_FROM_POD}:")},
        "storage": {"endpointUrl": f"http://{HOST_FROM_POD}:{minio_server.port}", "bucket": bucket,
                    "accessKey": USER, "secretKey": PASSWORD},
        # one pod each: no HorizontalPodAutoscaler without a cluster
        **{name: {"autoscaling": {"enabled": False}, "replicas": 1} for name in SERVICES},
        "dimse": {"enabled": False},
    }
    docs = render(values, release, tmp_path)
    full = f"{release}-dicomgw"
    try:
        # 1. the pre-install hook: its Secret, then the migration Job (the worker image's `migrate`)
        _podman_secret(podman, _find(docs, "Secret", f"{full}-migrate"), played.secrets)
        migrate = _job_as_pod(_find(docs, "Job", f"{full}-migrate"))
        _adapt(migrate["spec"])
        played.play("migrate", [migrate])
        container = f"{full}-migrate-migrate"
        code = wait_for(lambda: _exited(podman, container), 300, interval=1)
        assert code == [0], f"the migration Job failed:\n{podman.logs(f'{full}-migrate')}"
        # 2. the services: their ConfigMap, Secret and Deployments
        _podman_secret(podman, _find(docs, "Secret", f"{full}-secrets"), played.secrets)
        ports = {name: free_port() for name in SERVICES}
        deployments = []
        for name in SERVICES:
            deployment = _find(docs, "Deployment", f"{full}-{name}")
            _adapt(deployment["spec"]["template"]["spec"], ports[name])
            deployments.append(deployment)
        played.play("services", [_find(docs, "ConfigMap", f"{full}-config"), *deployments])
        roots = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        for name, root in roots.items():
            try:
                wait_for(lambda root=root: _ready(f"{root}/readyz"), 180, interval=0.5,
                         ignore=(httpx.HTTPError,))
            except AssertionError as exc:
                raise AssertionError(f"{name} never became ready:\n{podman.logs(f'{full}-{name}-pod-0')}") \
                    from exc

        # 3. credentials are required: an API key made the way the chart's README says
        # (`kubectl exec deploy/<release>-ingest -- dicomgw keys create ...`)
        assert httpx.get(f"{roots['query']}/dicom-web/studies", timeout=30).status_code == 401
        made = podman("exec", f"{full}-ingest-pod-0-ingest", "dicomgw", "keys", "create", "image-test",
                      "--scopes", "dicom.read,dicom.write")
        auth = {"authorization": f"Bearer {made.stdout.strip().splitlines()[-1]}"}

        # 4. STOW-RS to ingest, QIDO-RS from query, WADO-RS from retrieve
        data = make_instance(patient_name="Image^Test", patient_id="IMG-1")
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        body, content_type = multipart_related([data])
        stored = httpx.post(f"{roots['ingest']}/dicom-web/studies", content=body,
                            headers={**auth, "content-type": content_type,
                                     "accept": "application/dicom+json"}, timeout=120)
        assert stored.status_code == 200, stored.text
        found = httpx.get(f"{roots['query']}/dicom-web/studies/{ds.StudyInstanceUID}/instances",
                          headers={**auth, "accept": "application/dicom+json"}, timeout=60)
        assert found.status_code == 200, found.text
        assert [i["00080018"]["Value"][0] for i in found.json()] == [ds.SOPInstanceUID]
        instance = (f"{roots['retrieve']}/dicom-web/studies/{ds.StudyInstanceUID}/series/"
                    f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}")
        fetched = httpx.get(instance, headers={**auth, "accept": ANY_TS}, timeout=60)
        assert fetched.status_code == 200, fetched.text
        [(_, payload)] = split_multipart(fetched.content, fetched.headers["content-type"])
        assert payload == data
        # and they did so as the chart runs them: non-root, on a read-only root file system
        for name in SERVICES:
            shown = podman("inspect", "--format", "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}",
                           f"{full}-{name}-pod-0-{name}").stdout.split()
            assert shown == ["10001:10001", "true"], (name, shown)
    finally:
        postgres_server.drop_database(database)
