"""The Helm chart: lint, render with default and production values, and keep its promises.

Helm is built from its Go module into .tools/bin (make tools-helm). Every rendered workload must be
non-root with a read-only root filesystem, dropped capabilities, requests and limits, and probes; the
HTTPRoute must route exactly as the local nginx does; values.schema.json must refuse a wrong type; the
PrometheusRule and dashboard must be the files the Prometheus test checks.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.gateway import REPO

CHART = REPO / "deploy" / "helm" / "dicomgw"
PRODUCTION = CHART / "ci" / "production-values.yaml"
# every chart-testing values file, and the defaults
VALUES = [pytest.param([], id="default"),
          *(pytest.param(["-f", str(p)], id=p.name.removesuffix("-values.yaml"))
            for p in sorted((CHART / "ci").glob("*-values.yaml")))]
# what a cluster with the Prometheus operator and Gateway API installed announces to Helm
WITH_CRDS = ["--api-versions", "monitoring.coreos.com/v1/ServiceMonitor",
             "--api-versions", "monitoring.coreos.com/v1/PrometheusRule",
             "--api-versions", "gateway.networking.k8s.io/v1/HTTPRoute"]
CRD_KINDS = {"HTTPRoute", "ServiceMonitor", "PrometheusRule"}
HELM = Path(os.environ.get("DICOMGW_TOOLS", REPO / ".tools")) / "bin" / "helm"
KUBE_VERSION = "1.31.0"
NGINX = REPO / "services" / "gateway" / "src" / "dicomgw_gateway" / "nginx.conf.template"


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    if not HELM.exists():
        pytest.fail("Helm is not built: run `make tools-helm`")
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=120)


def render(*extra: str) -> list[dict[str, Any]]:
    done = helm("template", "dicomgw", str(CHART), "--kube-version", KUBE_VERSION, *extra)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.mark.parametrize("values", VALUES)
def test_lint_passes(values: list[str]) -> None:
    done = helm("lint", "--strict", str(CHART), *values)
    assert done.returncode == 0, done.stdout + done.stderr


def _pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            out.append((doc["metadata"]["name"], doc["spec"]["template"]["spec"]))
        elif doc["kind"] == "Pod":
            out.append((doc["metadata"]["name"], doc["spec"]))
    return out


@pytest.mark.parametrize("values", VALUES)
def test_every_workload_is_hardened_with_resources_and_probes(values: list[str]) -> None:
    docs = render(*values, *WITH_CRDS)
    specs = _pod_specs(docs)
    # ingest, query, retrieve, dimse, worker, beat, relay, migrations, smoke test
    assert len(specs) == 9
    for name, spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert container["resources"]["requests"] and container["resources"]["limits"], name
            if not name.endswith(("-migrate", "-smoke")):
                assert "livenessProbe" in container and "readinessProbe" in container, name
    kinds = {doc["kind"] for doc in docs}
    assert {"HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule",
            "ServiceAccount", "ConfigMap", "Service"} <= kinds
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "dicomgw", doc["kind"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


def test_production_values_use_existing_secrets_and_an_ingress() -> None:
    docs = render("-f", str(PRODUCTION))
    assert not [d for d in docs if d["kind"] == "Secret"]
    assert [d for d in docs if d["kind"] == "Ingress"] and not [d for d in docs if d["kind"] == "HTTPRoute"]
    ingest = next(d for d in docs
                  if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-ingest"))
    env = {e["name"]: e for e in ingest["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DICOMGW_INDEX_URL"]["valueFrom"]["secretKeyRef"] == {"name": "dicomgw-index", "key": "url"}
    assert "DICOMGW_REPLICA_SECRET_KEY" in env
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config"))
    assert config["data"]["DICOMGW_REPLICA_ENDPOINT_URL"] == "https://s3.second-site.example"
    assert json.loads(config["data"]["DICOMGW_HTTP_CORS_ORIGINS"]) == ["https://viewer.hospital.example"]


@pytest.mark.parametrize(
    ("setting", "value"),
    [("ingest.replicas", "abc"), ("config.logLevel", "loud"), ("redis.url", "http://x"),
     ("unknownKey", "1"), ("metrics.serviceMonitor.interval", "often"),
     ("metrics.serviceMonitor.enabled", "maybe"), ("networkPolicy.enabled", "yes")],
)
def test_schema_refuses_wrong_values(setting: str, value: str) -> None:
    done = helm("template", "dicomgw", str(CHART), "--kube-version", KUBE_VERSION,
                "--set", f"{setting}={value}")
    assert done.returncode != 0
    assert "schema" in done.stderr.lower() or "values don't meet" in done.stderr.lower()


def _kinds(*args: str) -> set[str]:
    return {d["kind"] for d in render(*args)} & CRD_KINDS


def test_objects_needing_crds_follow_the_cluster_unless_set_explicitly() -> None:
    # a plain cluster: nothing that would stop the install at the first unknown kind
    assert _kinds() == set()
    # the operator and Gateway API installed: `auto` renders them
    assert _kinds(*WITH_CRDS) == CRD_KINDS
    # an explicit value wins either way
    assert _kinds(*WITH_CRDS, "--set", "httpRoute.enabled=false",
                  "--set", "metrics.prometheusRule.enabled=false") == {"ServiceMonitor"}
    assert _kinds("--set", "metrics.serviceMonitor.enabled=true") == {"ServiceMonitor"}


def _by_kind_name(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


@pytest.mark.parametrize("values", VALUES)
def test_the_migration_hook_brings_everything_it_needs(values: list[str]) -> None:
    """Helm creates pre-install hooks before the release's other objects: the hook Job may use only
    hook objects created before it (lower weight) or objects that exist before the install."""
    docs = render(*values)
    objects = _by_kind_name(docs)
    job = objects[("Job", "dicomgw-migrate")]
    hooks = {key: d for key, d in objects.items() if "helm.sh/hook" in d["metadata"].get("annotations", {})}

    def weight(doc: dict[str, Any]) -> int:
        return int(doc["metadata"]["annotations"].get("helm.sh/hook-weight", "0"))

    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    earlier = {key for key, d in hooks.items()
               if weight(d) < weight(job) and "pre-install" in d["metadata"]["annotations"]["helm.sh/hook"]}
    for key in earlier:
        assert "hook-succeeded" in hooks[key]["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    spec = job["spec"]["template"]["spec"]
    assert ("ServiceAccount", spec["serviceAccountName"]) in earlier
    [container] = spec["containers"]
    assert "envFrom" not in container
    for env in container["env"]:
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            continue
        if ("Secret", ref["name"]) in objects:
            # a Secret of the chart's: it must be one of the hook's own
            assert ("Secret", ref["name"]) in earlier, ref


def test_the_migration_hook_uses_an_existing_service_account() -> None:
    docs = render("--set", "serviceAccount.create=false", "--set", "serviceAccount.name=imaging")
    job = _by_kind_name(docs)[("Job", "dicomgw-migrate")]
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "imaging"
    assert not [d for d in docs if d["kind"] == "ServiceAccount"]


def _nginx_route(method: str, path: str) -> str:
    text = NGINX.read_text().replace("${BASE}", "/dicom-web")
    block = text.split("map \"$request_method $uri\" $dicomgw_upstream {", 1)[1].split("}", 1)[0]
    for line in block.strip().splitlines():
        line = line.strip().rstrip(";")
        if line.startswith("default"):
            continue
        pattern, upstream = line.rsplit(None, 1)
        if re.search(pattern.strip('"')[1:], f"{method} {path}"):
            return upstream
    return "query"


def _httproute_route(route: dict[str, Any], method: str, path: str) -> str:
    for rule in route["spec"]["rules"]:
        for match in rule["matches"]:
            if match.get("method", method) != method:
                continue
            p = match["path"]
            hit = (re.fullmatch(p["value"], path) if p["type"] == "RegularExpression"
                   else path.startswith(p["value"]))
            if hit:
                return rule["backendRefs"][0]["name"].rsplit("-", 1)[1]
    return "none"


ROUTES = [
    ("POST", "/dicom-web/studies", "ingest"), ("POST", "/dicom-web/studies/1.2.3", "ingest"),
    ("GET", "/dicom-web/studies", "query"), ("GET", "/dicom-web/series", "query"),
    ("GET", "/dicom-web/instances", "query"), ("GET", "/dicom-web/studies/1.2.3/series", "query"),
    ("GET", "/dicom-web/studies/1.2.3/instances", "query"),
    ("GET", "/dicom-web/studies/1.2.3/series/4.5/instances", "query"),
    ("GET", "/dicom-web/studies/1.2.3", "retrieve"), ("GET", "/dicom-web/studies/1.2.3/metadata", "retrieve"),
    ("GET", "/dicom-web/studies/1.2.3/series/4.5", "retrieve"),
    ("GET", "/dicom-web/studies/1.2.3/series/4.5/instances/6.7/frames/1", "retrieve"),
    ("GET", "/dicom-web/studies/1.2.3/series/4.5/instances/6.7/rendered", "retrieve"),
    ("GET", "/dicom-web/studies/1.2.3/thumbnail", "retrieve"), ("GET", "/admin/status", "query"),
    ("OPTIONS", "/dicom-web/studies", "query"),
]
# every DICOMweb route again in a named partition
ROUTES += [(m, p.replace("/dicom-web/", "/dicom-web/partitions/hospital-a/"), s)
           for m, p, s in ROUTES if p.startswith("/dicom-web/")]


@pytest.fixture(scope="module")
def httproute() -> dict[str, Any]:
    [route] = [d for d in render(*WITH_CRDS) if d["kind"] == "HTTPRoute"]
    return route


@pytest.mark.parametrize(("method", "path", "service"), ROUTES)
def test_httproute_routes_like_the_local_nginx(httproute: dict[str, Any], method: str, path: str,
                                               service: str) -> None:
    assert _nginx_route(method, path) == service
    assert _httproute_route(httproute, method, path) == service


def test_alert_rules_and_dashboard_are_the_checked_files() -> None:
    docs = render(*WITH_CRDS)
    [rule] = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "rules" / "dicomgw.rules.yaml").read_text())
    [dashboard] = [d for d in docs
                   if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(dashboard["data"]["dicomgw.json"])
    assert shipped == json.loads((CHART / "files" / "dashboards" / "dicomgw.json").read_text())


# Custom resources the Kubernetes schemas do not describe; their shape is checked above
CUSTOM_KINDS = {"HTTPRoute", "ServiceMonitor", "PrometheusRule"}


@pytest.mark.parametrize("values", VALUES)
def test_every_object_validates_against_the_kubernetes_schemas(values: list[str]) -> None:
    import kubernetes_validate

    checked = 0
    for doc in render(*values):
        if doc["kind"] in CUSTOM_KINDS:
            continue
        # strict: an unknown field (a typo in a template) fails too
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        checked += 1
    assert checked >= 15


HELM_DOCS = HELM.parent / "helm-docs"


def test_chart_readme_is_generated_from_the_values_comments() -> None:
    """The README's parameters table is helm-docs' output for values.yaml as it is now, and every
    value has a description."""
    if not HELM_DOCS.exists():
        pytest.fail("helm-docs is not built: run `make tools-helm-docs`")
    done = subprocess.run([str(HELM_DOCS), "--dry-run", "--chart-search-root", str(CHART)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    readme = (CHART / "README.md").read_text()
    assert done.stdout == readme, (
        "deploy/helm/dicomgw/README.md is stale: run .tools/bin/helm-docs --chart-search-root "
        "deploy/helm/dicomgw")
    table = readme.split("## Values", 1)[1]
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ") and "`" in line]
    assert len(rows) > 50
    for key, _type, _default, description in rows:
        assert description.strip(" |"), f"{key} has no `# --` description in values.yaml"
    # the quick start names the values that must be set
    quick = readme.split("## Quick start", 1)[1].split("##", 1)[0]
    for value in ("index.url", "index.existingSecret", "storage.accessKey", "storage.existingSecret"):
        assert value in quick


def _containers(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(kind/name of the workload, container) of every rendered pod spec."""
    kinds = {d["metadata"]["name"]: d["kind"] for d in docs if d["kind"] in ("Deployment", "Job", "Pod")}
    return [(f"{kinds[name]}/{name}", container) for name, spec in _pod_specs(docs)
            for container in spec["containers"]]


def test_credentials_are_required_by_default_with_a_hashing_secret_kept_by_the_chart() -> None:
    docs = render()
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config"))
    assert config["data"]["DICOMGW_AUTH_MODE"] == "required"
    assert "DICOMGW_AUTH_ISSUER" not in config["data"]  # API keys only until an issuer is set
    assert json.loads(config["data"]["DICOMGW_AUTH_SCOPE_CLAIMS"]) == ["scope", "realm_access.roles"]
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "dicomgw-secrets")
    assert len(secret["stringData"]["auth-key-secret"]) == 48
    services = [(name, c) for name, c in _containers(docs) if name.startswith(("Deployment/", "Pod/"))]
    assert len(services) >= 7
    for name, container in services:
        env = {e["name"]: e for e in container.get("env", [])}
        assert env["DICOMGW_AUTH_KEY_SECRET"]["valueFrom"]["secretKeyRef"] == {
            "name": "dicomgw-secrets", "key": "auth-key-secret"}, name
    # the helm test makes a key of its own for its round trip
    smoke = next(c for name, c in _containers(docs) if name.endswith("-smoke"))
    assert "--ephemeral-key" in smoke["args"]


def test_anonymous_access_must_be_asked_for_in_so_many_words() -> None:
    refused = helm("template", "dicomgw", str(CHART), "--kube-version", KUBE_VERSION,
                   "--set", "auth.mode=none")
    assert refused.returncode != 0 and "allowAnonymous" in refused.stderr, refused.stderr
    docs = render("--set", "auth.mode=none", "--set", "auth.allowAnonymous=true")
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config"))
    assert config["data"]["DICOMGW_AUTH_MODE"] == "none"
    smoke = next(c for name, c in _containers(docs) if name.endswith("-smoke"))
    assert "--ephemeral-key" not in smoke["args"]


def test_production_values_name_the_hospitals_provider_and_an_existing_hashing_secret() -> None:
    docs = render("-f", str(PRODUCTION))
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config"))
    assert config["data"]["DICOMGW_AUTH_ISSUER"] == "https://login.hospital.example/realms/radiology"
    assert json.loads(config["data"]["DICOMGW_AUTH_AUDIENCE"]) == ["dicomgw"]
    assert json.loads(config["data"]["DICOMGW_AUTH_SCOPE_MAP"])["radiologist"] == ["dicom.read"]
    ingest = next(c for name, c in _containers(docs) if name.endswith("-ingest"))
    env = {e["name"]: e for e in ingest["env"]}
    assert env["DICOMGW_AUTH_KEY_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "dicomgw-auth", "key": "key-secret"}


def test_network_policies_let_only_the_named_peers_and_helm_tests_pod_reach_the_services() -> None:
    ha = CHART / "ci" / "ha-values.yaml"
    docs = render("-f", str(ha))
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}
    values = yaml.safe_load(ha.read_text())["networkPolicy"]
    smoke = next(d for d in docs if d["kind"] == "Pod" and d["metadata"]["name"].endswith("-smoke"))
    for service in ("ingest", "query", "retrieve"):
        [rule] = policies[f"dicomgw-{service}"]["spec"]["ingress"]
        peers = rule["from"]
        assert values["httpFrom"][0] in peers and values["metricsFrom"][0] in peers
        selectors = [p["podSelector"]["matchLabels"] for p in peers if "podSelector" in p]
        # the helm test pod is the only pod of the namespace let in, and it matches the selector
        assert len(selectors) == 1
        assert selectors[0].items() <= smoke["metadata"]["labels"].items()
        assert policies[f"dicomgw-{service}"]["spec"]["egress"][1:] == values["egress"]
    for quiet in ("beat", "relay", "migrations"):
        assert policies[f"dicomgw-{quiet}"]["spec"]["ingress"] == []


def test_protected_metrics_are_scraped_with_a_key_and_audit_settings_reach_the_services() -> None:
    ha = CHART / "ci" / "ha-values.yaml"
    docs = render("-f", str(ha), *WITH_CRDS)
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["authorization"] == {"type": "Bearer", "credentials": {
        "name": "dicomgw-prometheus-key", "key": "api-key"}}
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config"))
    assert config["data"]["DICOMGW_AUTH_PROTECT_METRICS"] == "true"
    assert config["data"]["DICOMGW_AUDIT_SYSLOG_URL"] == "tcp://audit-repository.security.svc:601"
    # without the Secret, the chart says what is missing instead of rendering a scrape that gets 401
    done = helm("template", "dicomgw", str(CHART), "--kube-version", KUBE_VERSION, *WITH_CRDS,
                "--set", "auth.protectMetrics=true")
    assert done.returncode != 0 and "metrics.serviceMonitor.authorization.secretName" in done.stderr
    assert helm("template", "dicomgw", str(CHART), "--kube-version", KUBE_VERSION,
                "--set", "audit.syslogUrl=https://x").returncode != 0


def test_backends_in_the_namespace_accept_only_this_releases_pods() -> None:
    backends = [{"name": "postgresql", "podSelector": {"app.kubernetes.io/name": "postgresql"},
                 "ports": [5432]},
                {"name": "redis", "podSelector": {"app": "redis"}, "ports": [6379]}]
    docs = render("--set", "networkPolicy.enabled=true", "--set-json",
                  f"networkPolicy.backends={json.dumps(backends)}")
    policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    postgres = policies["dicomgw-backend-postgresql"]
    assert postgres["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "postgresql"}
    [rule] = postgres["ingress"]
    assert rule["ports"] == [{"port": 5432, "protocol": "TCP"}]
    allowed = rule["from"][0]["podSelector"]["matchLabels"]
    # every pod of the release matches: the services, the workers, the migration hook, helm test's pod
    pods = [(d["kind"], d["metadata"]["name"], d["spec"]["template"]["metadata"]["labels"]
             if "template" in d["spec"] else d["metadata"]["labels"])
            for d in docs if d["kind"] in ("Deployment", "Job", "Pod")]
    assert len(pods) >= 8
    for kind, name, labels in pods:
        assert allowed.items() <= labels.items(), (kind, name)
    assert policies["dicomgw-backend-redis"]["ingress"][0]["ports"] == [{"port": 6379, "protocol": "TCP"}]
    refused = helm("template", "dicomgw", str(CHART), "--kube-version", KUBE_VERSION, "--set-json",
                   'networkPolicy.backends=[{"name": "pg", "podSelector": {}, "ports": [5432]}]')
    assert refused.returncode != 0  # an empty selector would lock every pod of the namespace
