"""The service images' Dockerfile keeps its promises (no Docker engine runs here to build it)."""

from __future__ import annotations

import re
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"


def _stages() -> dict[str, str]:
    text = DOCKERFILE.read_text()
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", text, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def test_every_service_has_an_image_that_runs_it() -> None:
    stages = _stages()
    for module in ("dicomgw_ingest", "dicomgw_query", "dicomgw_retrieve"):
        name = module.removeprefix("dicomgw_")
        assert f"{module}.app:create_app" in stages[name]
        assert "--timeout-graceful-shutdown" in stages[name]
    assert "dicomgw-worker" in stages["worker"]


def test_images_run_as_non_root_with_a_healthcheck() -> None:
    runtime = _stages()["runtime"]
    assert re.search(r"^USER 10001$", runtime, flags=re.MULTILINE)
    assert "HEALTHCHECK" in runtime and "/healthz" in runtime
    assert re.search(r"^ARG PYTHON=python:3\.11-slim", DOCKERFILE.read_text(), flags=re.MULTILINE)
