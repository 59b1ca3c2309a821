"""The short chaos soak of `make test`: the local stack (supervised, toxiproxy in front of its back ends)
under a steady mixed load through two rounds of faults, alone and together; then the audit of every
acknowledged instance. `make soak` runs the long one (random rounds of the whole catalogue)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from dicomgw_gateway import soak


@pytest.mark.timeout(900)
def test_short_soak_loses_nothing_and_answers_no_unexpected_5xx() -> None:
    # two forwarders a little apart (0.3 s between studies): about half the instances of back-to-back
    # ones, the same faults, half the backlog for the audit to wait for (the suite's time budget)
    run_dir = Path(tempfile.mkdtemp(prefix="dicomgw-test-soak-"))
    report = soak.soak(seconds=0, rounds=0, fault_seconds=4, seed=11, keep=run_dir,
                       plan=soak.SHORT_PLAN, forwarders=2, pace=0.3)
    text = "\n".join(report.lines())
    print(text)
    audit = report.audit
    assert audit["acknowledged"] > 100, text  # a real load went through the faults
    assert report.lost == 0, text
    assert not report.ledger.unexpected, text
    assert not report.ledger.wrong, text
    assert len(report.faults) == sum(len(step) for step in soak.SHORT_PLAN), text
    # every acknowledged instance indexed, verified, byte-exact in both stores, served byte-exact
    n = audit["acknowledged"]
    assert audit["indexed"] == audit["verified"] == audit["primary"] == audit["replica"] == n, text
    assert audit["served"] == n, text
    assert audit["compacted"] > 0, text  # compaction ran under the load, and lost nothing either
    assert text.splitlines()[-1] == (f"soak: {n} acknowledged, 0 lost, {len(report.faults)} faults, "
                                     "0 unexpected 5xx")
    assert report.passed
