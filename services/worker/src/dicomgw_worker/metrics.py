"""Prometheus metrics of background work (labels carry outcomes only, never UIDs or PHI)."""

from __future__ import annotations

from prometheus_client import Counter

checksum_results = Counter(
    "dicomgw_checksum_results_total", "Re-hash results of stored originals", ["store", "result"]
)
replication_results = Counter(
    "dicomgw_replication_results_total", "Outcomes of replication tasks", ["result"]
)
repair_results = Counter("dicomgw_repair_results_total", "Outcomes of repair tasks", ["result"])
task_outcomes = Counter(
    "dicomgw_background_tasks_total", "Background task runs by task and outcome", ["task", "outcome"]
)
