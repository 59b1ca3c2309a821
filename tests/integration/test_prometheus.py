"""The shipped alert rules and Grafana dashboard against a real Prometheus scraping a real gateway.

`promtool check rules` passes; every PromQL expression of the rules and the dashboard is accepted by
the server (and the dashboard's return data once traffic flowed); a forced checksum mismatch makes its
alert fire.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.dicomdata import make_study, multipart_related
from tests.fixtures.gateway import REPO, Gateway, free_port
from tests.polling import wait_for

CHART_FILES = REPO / "deploy" / "helm" / "dicomgw" / "files"
RULES = CHART_FILES / "rules" / "dicomgw.rules.yaml"
DASHBOARD = CHART_FILES / "dashboards" / "dicomgw.json"
# a Prometheus still starting answers with errors or non-JSON: not yet
_NOT_YET = (httpx.HTTPError, AssertionError, KeyError, ValueError)


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make tools-prometheus`")
    return path


def test_promtool_accepts_the_rules() -> None:
    done = subprocess.run([_binary("promtool"), "check", "rules", str(RULES)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@pytest.fixture
def monitored(make_gateway, tmp_path: Path) -> Iterator[tuple[Gateway, str]]:  # type: ignore[no-untyped-def]
    gw = make_gateway(env={"DICOMGW_WORKER_POLL_SECONDS": "0.1", "DICOMGW_WORKER_SWEEP_SECONDS": "0.5",
                           "DICOMGW_WORKER_VERIFY_CYCLE_SECONDS": "1"})
    with _prometheus(tmp_path, {"dicomgw-gateway": gw.root.removeprefix("http://")}) as api:
        yield gw, api


@contextlib.contextmanager
def _prometheus(tmp_path: Path, targets: dict[str, str]) -> Iterator[str]:
    """A real Prometheus scraping ``targets`` (job -> host:port) every second with the shipped rules;
    yields its API root once every target is up."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                           for job, target in targets.items()],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = tmp_path / "prometheus.log"
    proc = subprocess.Popen(
        [_binary("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        wait_for(lambda: _query(api, "sum(up)") == [float(len(targets))], 60, ignore=_NOT_YET, log=log)
        yield api
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _query(api: str, expr: str) -> list[float]:
    resp = httpx.get(f"{api}/query", params={"query": expr}, timeout=10).json()
    assert resp["status"] == "success", (expr, resp)
    result = resp["data"]["result"]
    if resp["data"]["resultType"] == "scalar":
        return [float(result[1])]
    return [float(item["value"][1]) for item in result]


def _rule_expressions() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def test_every_expression_is_valid_and_a_forced_mismatch_fires(monitored) -> None:  # type: ignore[no-untyped-def]
    gw, api = monitored
    body, ct = multipart_related(make_study(1, 3))
    assert httpx.post(f"{gw.url}/studies", content=body, headers={"content-type": ct}).status_code == 200
    httpx.get(f"{gw.url}/studies")
    wait_for(lambda: _query(api, 'max(dicomgw_originals{status="verified"})') == [3.0], 60, ignore=_NOT_YET)
    for expr in _rule_expressions().values():
        _query(api, expr)  # accepted by the server (most are quiet, as they should be)
    quiet = httpx.get(f"{api}/alerts").json()["data"]["alerts"]
    assert not [a for a in quiet if a["state"] == "firing"], quiet

    panels = json.loads(DASHBOARD.read_text())["panels"]

    def empty_panels() -> list[str]:
        return [panel["title"] for panel in panels
                if not any(_query(api, target["expr"]) for target in panel["targets"])]

    # a rate has data from its second scrape after the event on; what did not happen here stays empty
    # (replication without a replica, originals kept though damaged, reads of a cold tier)
    maybe_empty = {"Replication outcomes",
                   "Kept though damaged (stored with 0xB007) and orphans swept, per hour",
                   "Reads by storage tier, and their time to the first byte (p95)"}
    wait_for(lambda: len(empty_panels()) <= len(maybe_empty), 60, ignore=_NOT_YET)
    assert set(empty_panels()) <= maybe_empty

    # damage an original at rest; with no replica to repair from it ends as "lost"
    victim = next((gw.data_dir / "objects" / "originals").rglob("*.dcm"))
    victim.write_bytes(victim.read_bytes()[:-64] + b"\0" * 64)

    def firing() -> bool:
        alerts = httpx.get(f"{api}/alerts").json()["data"]["alerts"]
        return any(a["labels"]["alertname"] == "DicomgwChecksumMismatch" and a["state"] == "firing"
                   for a in alerts)

    wait_for(firing, 60, ignore=_NOT_YET)


def test_prometheus_scrapes_the_distributed_stack_under_load(stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    c = stack.config
    ports = {"dicomgw-ingest": c.ingest_port, "dicomgw-query": c.query_port,
             "dicomgw-retrieve": c.retrieve_port, "dicomgw-worker": c.worker_metrics_port}
    with _prometheus(tmp_path, {job: f"127.0.0.1:{port}" for job, port in ports.items()}) as api:
        for _ in range(3):  # a workload: store, search, retrieve
            body, ct = multipart_related(make_study(1, 2))
            study = stack.http.post(f"{c.url}/studies", content=body,
                                    headers={"content-type": ct}).json()["00081190"]["Value"][0]
            stack.http.get(f"{c.url}/studies", params={"limit": 5})
            stack.http.get(f"{study}/metadata")
        by_service = 'sum by (service) (dicomgw_http_requests_total{route!~"/(metrics|healthz|readyz)"})'
        wait_for(lambda: len(_query(api, by_service)) == 3, 60, ignore=_NOT_YET)
        replicated = 'sum(dicomgw_background_tasks_total{task="replicate"})'
        wait_for(lambda: sum(_query(api, replicated)) >= 6, 90, ignore=_NOT_YET)
        for expr in _rule_expressions().values():
            _query(api, expr)
