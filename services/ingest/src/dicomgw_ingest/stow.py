"""STOW-RS responses: the PS3.18 10.5 dataset built from the outcome of storing a request's parts."""

from __future__ import annotations

from dicomgw.ingest import DAMAGED_WARNING, PartResult, StowOutcome

__all__ = ["response_dataset"]


def response_dataset(outcome: StowOutcome, base_url: str, study_uid: str | None) -> dict[str, object]:
    """The PS3.18 Table 10.5.3-1 response as DICOM JSON."""
    body: dict[str, object] = {}
    studies = {r.study_instance_uid for r in outcome.succeeded if r.study_instance_uid}
    target = study_uid or (next(iter(studies)) if len(studies) == 1 else None)
    if target:
        body["00081190"] = {"vr": "UR", "Value": [f"{base_url}/studies/{target}"]}
    if outcome.failed:
        body["00081198"] = {"vr": "SQ", "Value": [_failed_item(r) for r in outcome.failed]}
    if outcome.succeeded:
        body["00081199"] = {"vr": "SQ", "Value": [_referenced_item(r, base_url)
                                                  for r in outcome.succeeded]}
    return body


def _sop_refs(r: PartResult) -> dict[str, object]:
    item: dict[str, object] = {}
    item["00081150"] = ({"vr": "UI", "Value": [r.sop_class_uid]} if r.sop_class_uid
                        else {"vr": "UI"})
    item["00081155"] = ({"vr": "UI", "Value": [r.sop_instance_uid]} if r.sop_instance_uid
                        else {"vr": "UI"})
    return item


def _failed_item(r: PartResult) -> dict[str, object]:
    assert r.error is not None
    item = _sop_refs(r)
    item["00081197"] = {"vr": "US", "Value": [r.error.failure_reason]}
    return item


def _referenced_item(r: PartResult, base_url: str) -> dict[str, object]:
    item = _sop_refs(r)
    item["00081190"] = {"vr": "UR", "Value": [
        f"{base_url}/studies/{r.study_instance_uid}/series/{r.series_instance_uid}"
        f"/instances/{r.sop_instance_uid}"
    ]}
    if r.damaged:
        item["00081196"] = {"vr": "US", "Value": [DAMAGED_WARNING]}
    return item
