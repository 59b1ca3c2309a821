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
orphans_found = Counter(
    "dicomgw_orphans_found_total", "Originals in a store that no index row references, past the grace period",
    ["store"],
)
orphans_found_bytes = Counter("dicomgw_orphans_found_bytes_total", "Bytes of the orphans found", ["store"])
orphans_handled = Counter(
    "dicomgw_orphans_handled_total", "What the orphan sweep did with each orphan (indexed, removed, kept, "
    "skipped)", ["store", "outcome"],
)
orphans_handled_bytes = Counter(
    "dicomgw_orphans_handled_bytes_total", "Bytes of the orphans by what the sweep did", ["store", "outcome"]
)
compaction_results = Counter("dicomgw_compaction_results_total",
                             "Originals the compaction looked at, by result (compacted, kept-verbatim)",
                             ["result"])
compaction_bytes = Counter("dicomgw_compaction_bytes_total",
                           "Bytes of the originals compacted (original) and of their compact forms (stored)",
                           ["kind"])
tier_moves = Counter("dicomgw_tier_moves_total", "Originals moved to a storage tier", ["tier"])
