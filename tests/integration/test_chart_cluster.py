"""The Helm chart on a real Kubernetes v1.34 control plane, as a user installs it.

`helm lint` and `helm template` cannot see what only an API server decides: the order in which Helm
creates hooks and objects, whether every object is accepted server-side (strict field validation), and
whether every pod is admitted in a namespace enforcing Pod Security `restricted`. Here the chart is
installed with its default values and with each `ci/*-values.yaml` (chart-testing's convention),
waited for until every Deployment is available, upgraded (running the pre-upgrade migration hook),
rolled back and uninstalled until nothing of the release is left, with and without the
Prometheus-operator and Gateway API CRDs. The control plane is tests/fixtures/kube.py.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.kube import Cluster
from tests.polling import wait_for

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "dicomgw"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
VALUES = [pytest.param(None, id="default"),
          *(pytest.param(p, id=p.name.removesuffix("-values.yaml")) for p in CI_VALUES)]
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "HTTPRoute"}
RELEASE = "dicomgw"


def _values(path: Path | None) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) if path else {}


def _create_existing_secrets(cluster: Cluster, namespace: str,
                             values: dict[str, Any]) -> set[tuple[str, str]]:
    """The Secrets a values file names as existing ones: a user creates them before `helm install`."""
    index = values.get("index", {})
    secrets: dict[str, dict[str, str]] = {}
    if index.get("existingSecret"):
        key = index.get("existingSecretKey", "index-url")
        secrets[index["existingSecret"]] = {
            key: "postgresql+asyncpg://dicomgw:secret@postgresql.db.svc:5432/dicomgw"}
    for store in ("storage", "replica"):
        name = values.get(store, {}).get("existingSecret")
        if name:
            secrets[name] = {"access-key": f"{store}-user", "secret-key": f"{store}-password"}
    auth = values.get("auth", {})
    if auth.get("existingSecret"):
        secrets[auth["existingSecret"]] = {auth.get("existingSecretKey", "key-secret"): "api-key-hashing"}
    for name, data in secrets.items():
        manifest = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
                    "type": "Opaque", "stringData": data}
        cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(manifest))
    return {("Secret", name) for name in secrets}


def _install(cluster: Cluster, namespace: str, path: Path | None, *extra: str,
             check: bool = True) -> Any:
    """`helm install --wait`, after creating the Secrets the values file expects to exist."""
    _create_existing_secrets(cluster, namespace, _values(path))
    files = ["-f", str(path)] if path else []
    return cluster.helm("install", RELEASE, str(CHART), "-n", namespace, *files, *extra,
                        "--wait", "--timeout", "5m", check=check)


def _deployments_available(cluster: Cluster, namespace: str) -> list[str]:
    """Every Deployment has all its replicas ready and available (waited for: an HPA may have just
    raised the count to its minimum); their names."""
    def check() -> list[str] | None:
        deployments = cluster.get("deployments", "-n", namespace)["items"]
        for d in deployments:
            status = d["status"]
            conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
            if not (status.get("availableReplicas") == d["spec"]["replicas"] == status.get("readyReplicas")
                    and conditions.get("Available") == "True"):
                return None
        return [d["metadata"]["name"] for d in deployments]
    return wait_for(check, 120)


def _hook_runs(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    status = json.loads(cluster.helm("status", RELEASE, "-n", namespace, "-o", "json").stdout)
    return {f"{h['kind']}/{h['name']}": h["last_run"] for h in status.get("hooks", [])}


def _uninstall_leaves_nothing(cluster: Cluster, namespace: str, user_secrets: set[tuple[str, str]]) -> None:
    cluster.helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "3m")

    def left() -> set[tuple[str, str]]:
        # the user's own Secrets stay; ReplicaSets and pods go by garbage collection after their owners
        return cluster.objects_in(namespace) - user_secrets

    try:
        wait_for(lambda: not left(), 120)
    except AssertionError:
        raise AssertionError(f"left after uninstall: {sorted(left())}") from None
    assert cluster.helm("list", "-n", namespace, "-a", "-q").stdout.strip() == ""


@pytest.mark.parametrize("values", VALUES)
def test_install_on_a_plain_cluster_then_uninstall_leaves_nothing(
        kube_cluster: Cluster, restricted_namespace: str, values: Path | None) -> None:
    kube_cluster.crds(present=False)
    ns = restricted_namespace
    user_secrets = _create_existing_secrets(kube_cluster, ns, _values(values))
    _install(kube_cluster, ns, values)
    names = _deployments_available(kube_cluster, ns)
    components = ("ingest", "query", "retrieve", "worker", "beat", "relay")
    assert {f"{RELEASE}-{c}" for c in components} <= set(names)
    expected = _values(values)
    for component in ("query", "worker", "dimse"):
        replicas = expected.get(component, {}).get("replicas")
        if replicas and f"{RELEASE}-{component}" in names:
            deployment = kube_cluster.get("deployment", f"{RELEASE}-{component}", "-n", ns)
            assert deployment["spec"]["replicas"] == replicas

    # the migration hook ran first, with objects of its own, and cleaned up after itself
    runs = _hook_runs(kube_cluster, ns)
    assert runs[f"Job/{RELEASE}-migrate"]["phase"] == "Succeeded", runs
    objects = kube_cluster.objects_in(ns)
    assert not [o for o in objects if "-migrate" in o[1]], objects
    # nothing that needs a CRD was created on a cluster without them
    assert not {kind for kind, _ in objects} & CRD_KINDS

    if expected.get("networkPolicy", {}).get("enabled"):
        policies = {name for kind, name in objects if kind == "NetworkPolicy"}
        assert f"{RELEASE}-ingest" in policies and f"{RELEASE}-migrations" in policies
    hpas = kube_cluster.get("hpa", "-n", ns)["items"]
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas} >= {f"{RELEASE}-ingest", f"{RELEASE}-retrieve"}
    # every PDB selects pods that exist
    for pdb in kube_cluster.get("pdb", "-n", ns)["items"]:
        assert pdb["status"].get("expectedPods", 0) >= 1, pdb["metadata"]["name"]

    _uninstall_leaves_nothing(kube_cluster, ns, user_secrets)


@pytest.mark.parametrize("crds", [False, True], ids=["without-crds", "with-crds"])
@pytest.mark.parametrize("values", VALUES)
def test_every_rendered_object_is_accepted_server_side_strictly(
        kube_cluster: Cluster, restricted_namespace: str, values: Path | None, crds: bool) -> None:
    """Each object, hooks and the test pod included, through the API server's strict validation and
    admission (Pod Security `restricted` included) without being stored."""
    kube_cluster.crds(present=crds)
    ns = restricted_namespace
    files = ["-f", str(values)] if values else []
    # --validate: rendered with the cluster's own capabilities, as `helm install` would
    rendered = kube_cluster.helm("template", RELEASE, str(CHART), "-n", ns, "--validate", *files).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    kinds = {d["kind"] for d in docs}
    wanted = set(CRD_KINDS) if crds else set()
    if _values(values).get("httpRoute", {}).get("enabled") is False:
        wanted.discard("HTTPRoute")
    assert kinds & CRD_KINDS == wanted
    # objects created in a dry run are not stored, yet pods (the helm-test pod, the hook Job's) are
    # admitted only if their ServiceAccount exists: those are created for real first
    accounts = [d for d in docs if d["kind"] == "ServiceAccount"]
    kube_cluster.kubectl("apply", "-n", ns, "--validate=strict", "-f", "-",
                         stdin=yaml.safe_dump_all(accounts))
    done = kube_cluster.kubectl("apply", "-n", ns, "--dry-run=server", "--validate=strict",
                                "-f", "-", stdin=rendered)
    assert len(done.stdout.strip().splitlines()) == len(docs), done.stdout
    assert "Warning" not in done.stderr, done.stderr


def test_with_the_crds_auto_renders_them_and_an_explicit_false_wins(
        kube_cluster: Cluster, restricted_namespace: str) -> None:
    kube_cluster.crds(present=True)
    ns = restricted_namespace
    _install(kube_cluster, ns, None, "--set", "metrics.prometheusRule.enabled=false")
    _deployments_available(kube_cluster, ns)
    kinds = {kind for kind, _ in kube_cluster.objects_in(ns)}
    assert {"ServiceMonitor", "HTTPRoute"} <= kinds and "PrometheusRule" not in kinds
    monitor = kube_cluster.get("servicemonitor", RELEASE, "-n", ns)
    assert monitor["spec"]["endpoints"]
    notes = kube_cluster.helm("get", "notes", RELEASE, "-n", ns).stdout
    assert "HTTPRoute" in notes and "ServiceMonitor" in notes
    _uninstall_leaves_nothing(kube_cluster, ns, set())


def test_without_the_crds_an_explicit_true_fails_clearly(
        kube_cluster: Cluster, restricted_namespace: str) -> None:
    kube_cluster.crds(present=False)
    done = _install(kube_cluster, restricted_namespace, None, "--set", "metrics.serviceMonitor.enabled=true",
                    check=False)
    assert done.returncode != 0
    assert "ServiceMonitor" in done.stderr and "monitoring.coreos.com/v1" in done.stderr, done.stderr
    # the failure came before anything was created: nothing to clean up
    assert kube_cluster.objects_in(restricted_namespace) == set()


def _hpas(cluster: Cluster, namespace: str) -> set[str]:
    return {h["metadata"]["name"] for h in cluster.get("hpa", "-n", namespace)["items"]}


def _started(run: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(run["started_at"].replace("Z", "+00:00"))


def test_upgrade_runs_the_migration_hook_and_rollback_restores(
        kube_cluster: Cluster, restricted_namespace: str) -> None:
    kube_cluster.crds(present=False)
    ns = restricted_namespace
    _install(kube_cluster, ns, None)
    installed = _hook_runs(kube_cluster, ns)[f"Job/{RELEASE}-migrate"]

    kube_cluster.helm("upgrade", RELEASE, str(CHART), "-n", ns, "--reuse-values",
                      "--set", "config.logLevel=debug", "--set", "query.autoscaling.enabled=false",
                      "--set", "query.replicas=3", "--wait", "--timeout", "5m")
    upgraded = _hook_runs(kube_cluster, ns)[f"Job/{RELEASE}-migrate"]
    assert upgraded["phase"] == "Succeeded" and _started(upgraded) > _started(installed)
    config = kube_cluster.get("configmap", f"{RELEASE}-config", "-n", ns)
    assert config["data"]["DICOMGW_LOG_LEVEL"] == "debug"
    assert kube_cluster.get("deployment", f"{RELEASE}-query", "-n", ns)["spec"]["replicas"] == 3
    assert f"{RELEASE}-query" not in _hpas(kube_cluster, ns)
    _deployments_available(kube_cluster, ns)

    kube_cluster.helm("rollback", RELEASE, "1", "-n", ns, "--wait", "--timeout", "5m")
    config = kube_cluster.get("configmap", f"{RELEASE}-config", "-n", ns)
    assert config["data"]["DICOMGW_LOG_LEVEL"] == "info"
    assert f"{RELEASE}-query" in _hpas(kube_cluster, ns)
    history = json.loads(kube_cluster.helm("history", RELEASE, "-n", ns, "-o", "json").stdout)
    assert [(h["revision"], h["status"]) for h in history] == [
        (1, "superseded"), (2, "superseded"), (3, "deployed")]
    _deployments_available(kube_cluster, ns)
    _uninstall_leaves_nothing(kube_cluster, ns, set())
