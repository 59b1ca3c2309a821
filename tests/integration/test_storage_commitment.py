"""Storage Commitment Push Model (PS3.4 Annex J) on the DIMSE front door, pynetdicom as the modality.

dcmtk on Debian has no storage-commitment SCU, so the requester here is pynetdicom: it stores with
C-STORE, asks with N-ACTION and takes the N-EVENT-REPORT on its own association, or as a listening AE
the gateway associates with (DICOMGW_DIMSE_PEERS). One gateway's background loop verifies originals
within a fraction of a second; the others' loops sleep for an hour, and a test verifies originals itself
(the worker tier's own verify_many) when it wants them committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, MRImageStorage  # type: ignore[attr-defined]

from dicomgw.config import IndexSettings, Settings
from dicomgw.runtime import open_runtime
from dicomgw_dimse.commitment import IndexedOriginal, commitment_state
from dicomgw_worker.tasks import verify_many
from tests.dicomdata import make_dataset, uid
from tests.fixtures.gateway import Gateway, free_port, start_gateway
from tests.polling import wait_for

STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"
VERIFICATION = "1.2.840.10008.1.1"
N_EVENT_REPORT_RSP = 0x8100  # Command Field


@dataclass
class Report:
    """An N-EVENT-REPORT as the requester received it."""

    event_type: int
    transaction_uid: str
    committed: set[tuple[str, str]]
    failed: set[tuple[str, str, int]]
    requestor: str  # the AE title that opened the association it came on
    scp_role_proposed: bool  # the sender asked to be the SCP of the association's commitment context


def _report(event: Any) -> Report:
    info = event.event_information
    requestor = event.assoc.requestor
    context = next(cx for cx in event.assoc.accepted_contexts if cx.abstract_syntax == STORAGE_COMMITMENT)
    return Report(
        event_type=event.event_type, transaction_uid=str(info.TransactionUID),
        committed={(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
                   for i in info.get("ReferencedSOPSequence", [])},
        failed={(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID), int(i.FailureReason))
                for i in info.get("FailedSOPSequence", [])},
        requestor=str(requestor.ae_title).strip(),
        # the acceptor may act as SCU only: the requestor is the SCP (PS3.4 J.3.3, role selection)
        scp_role_proposed=bool(context.as_scu and not context.as_scp))


class Modality:
    """A requester: stores, asks for commitment, and collects every N-EVENT-REPORT it is sent."""

    def __init__(self, ae_title: str | None = None) -> None:
        # its own AE title unless told: a gateway keeps undelivered reports per AE title
        self.ae_title = ae_title or f"MOD{secrets.token_hex(4).upper()}"
        self.reports: queue.Queue[Report] = queue.Queue()
        self._answering: dict[int, Report] = {}

    def on_event_report(self, event: Any) -> tuple[int, None]:
        self._answering[id(event.assoc)] = _report(event)
        return 0x0000, None

    def on_sent(self, event: Any) -> None:
        """A report counts as received once it is answered: a test that released its association as
        soon as the report arrived would make the answer late, and the gateway wait for it."""
        if event.message.command_set.get("CommandField") == N_EVENT_REPORT_RSP:
            self.reports.put(self._answering.pop(id(event.assoc)))

    def handlers(self) -> list[tuple[Any, Any]]:
        return [(evt.EVT_N_EVENT_REPORT, self.on_event_report), (evt.EVT_DIMSE_SENT, self.on_sent)]

    def associate(self, port: int) -> Association:
        ae = AE(ae_title=self.ae_title)
        for sop_class in (CTImageStorage, MRImageStorage, STORAGE_COMMITMENT, VERIFICATION):
            ae.add_requested_context(sop_class)
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOMGW", evt_handlers=self.handlers())
        assert assoc.is_established
        return assoc

    @contextlib.contextmanager
    def listening(self, port: int) -> Iterator[None]:
        """Accept the gateway's association for the report, as the SCU of the SOP class."""
        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(STORAGE_COMMITMENT, scu_role=False, scp_role=True)
        server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=self.handlers())
        try:
            yield
        finally:
            server.shutdown()

    def report(self, seconds: float = 20) -> Report:
        try:
            return self.reports.get(timeout=seconds)
        except queue.Empty:
            raise AssertionError(f"no N-EVENT-REPORT within {seconds} s") from None


def store(assoc: Association, n: int) -> list[Dataset]:
    datasets = [make_dataset() for _ in range(n)]
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0x0000
    return datasets


def reference(ds: Dataset, sop_class_uid: str | None = None) -> tuple[str, str]:
    return sop_class_uid or str(ds.SOPClassUID), str(ds.SOPInstanceUID)


def action_information(transaction_uid: str, references: list[tuple[str, str]]) -> Dataset:
    info = Dataset()
    info.TransactionUID = transaction_uid
    items = []
    for sop_class_uid, sop_instance_uid in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class_uid
        item.ReferencedSOPInstanceUID = sop_instance_uid
        items.append(item)
    info.ReferencedSOPSequence = items
    return info


def request(assoc: Association, transaction_uid: str, references: list[tuple[str, str]],
            edit: Callable[[Dataset], object] = lambda info: None, *, action_type: int = 1,
            instance_uid: str = WELL_KNOWN_INSTANCE) -> int:
    """Send an N-ACTION Request Storage Commitment (its Action Information changed by ``edit``);
    the status of the answer."""
    info = action_information(transaction_uid, references)
    edit(info)
    status, _ = assoc.send_n_action(info, action_type, STORAGE_COMMITMENT, instance_uid)
    return int(status.Status)


def verify_now(gw: Gateway, datasets: list[Dataset]) -> None:
    """Run the worker tier's verification of these originals against the gateway's index and store."""
    settings = Settings(data_dir=gw.data_dir, index=IndexSettings(
        url=f"sqlite+aiosqlite:///{(gw.data_dir / 'index.sqlite3').resolve()}", migrate=False))

    async def verify() -> dict[str, str]:
        async with open_runtime(settings, migrate=False) as runtime:
            return await verify_many(runtime, [str(ds.SOPInstanceUID) for ds in datasets])

    assert set(asyncio.run(verify()).values()) == {"verified"}


def _dimse_env(port: int, **extra: str) -> dict[str, str]:
    return {"DICOMGW_DIMSE_PORT": str(port), "DICOMGW_DIMSE_AE_TITLE": "DICOMGW", **extra}


@pytest.fixture(scope="module")
def verifying(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, int]]:
    """A gateway whose background loop verifies new originals within a fraction of a second."""
    port = free_port()
    gw = start_gateway(tmp_path_factory.mktemp("commitment"), _dimse_env(
        port, DICOMGW_DIMSE_COMMITMENT_WAIT_SECONDS="20"))
    yield gw, port
    gw.stop()


@dataclass
class Held:
    gw: Gateway
    port: int
    peers: dict[str, int]  # AE title -> port it listens on


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Held]:
    """A gateway whose background loop does not verify (its next poll is an hour away): a test verifies
    originals itself when it wants them committed, well within the wait."""
    port = free_port()
    peers = {"LISTENER": free_port(), "LATE": free_port()}
    gw = start_gateway(tmp_path_factory.mktemp("commitment-held"), _dimse_env(
        port, DICOMGW_WORKER_POLL_SECONDS="3600", DICOMGW_DIMSE_COMMITMENT_WAIT_SECONDS="60",
        DICOMGW_DIMSE_PEERS=json.dumps({ae: f"127.0.0.1:{p}" for ae, p in peers.items()})))
    yield Held(gw, port, peers)
    gw.stop()


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, int]]:
    """A gateway that does not verify either, and waits 2 s for what is not verified yet."""
    port = free_port()
    gw = start_gateway(tmp_path_factory.mktemp("commitment-impatient"), _dimse_env(
        port, DICOMGW_WORKER_POLL_SECONDS="3600", DICOMGW_DIMSE_COMMITMENT_WAIT_SECONDS="2"))
    yield gw, port
    gw.stop()


def commitment_audit_events(gw: Gateway, transaction_uid: str) -> list[dict[str, Any]]:
    """The audit trail's rows about one commitment, read from the gateway's index."""
    with contextlib.closing(sqlite3.connect(gw.data_dir / "index.sqlite3", timeout=10)) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute(
            "SELECT who, who_kind, route, method, outcome, studies, detail FROM audit_events "
            "WHERE method = 'N-ACTION' AND detail LIKE ?", (f"%{transaction_uid}%",))]


def store_and_request(assoc: Association, count: int) -> tuple[list[Dataset], str]:
    """C-STORE ``count`` instances, then request commitment of all of them (answered Success)."""
    stored = store(assoc, count)
    transaction = uid()
    assert request(assoc, transaction, [reference(ds) for ds in stored]) == 0x0000
    return stored, transaction

def test_report_on_the_open_association_lists_committed_and_failed_instances_with_reasons(
        verifying: tuple[Gateway, int]) -> None:
    gw, port = verifying
    modality = Modality()
    assoc = modality.associate(port)
    try:
        stored = store(assoc, 4)
        unknown = (CTImageStorage, uid())
        wrong_class = reference(stored[3], MRImageStorage)  # a CT image named as an MR image
        transaction = uid()
        committed = [reference(ds) for ds in stored[:3]]
        assert request(assoc, transaction, [*committed, unknown, wrong_class, committed[0]]) == 0x0000
        report = modality.report()
    finally:
        assoc.release()
    assert report.transaction_uid == transaction
    assert report.event_type == 2  # some failed
    assert report.requestor == modality.ae_title  # on the requester's own association
    assert report.committed == set(committed)
    assert report.failed == {(*unknown, 0x0112), (*wrong_class, 0x0119)}
    assert modality.reports.empty()  # one report per transaction, the repeated reference once in it

    study = str(stored[0].StudyInstanceUID)
    events = wait_for(lambda: commitment_audit_events(gw, transaction), 20)
    assert [(e["who"], e["who_kind"], e["route"], e["outcome"]) for e in events] == [
        (modality.ae_title, "dicom-ae", "DIMSE", 4)]  # 4: minor failure, some were not committed
    assert f" {study} " in events[0]["studies"]
    assert "3 committed, 2 failed (1 0x0112, 1 0x0119)" in events[0]["detail"]
    assert "requesting association" in events[0]["detail"]


def test_all_committed_is_event_type_1(verifying: tuple[Gateway, int]) -> None:
    _, port = verifying
    modality = Modality()
    assoc = modality.associate(port)
    try:
        stored, transaction = store_and_request(assoc, 2)
        report = modality.report()
    finally:
        assoc.release()
    assert (report.transaction_uid, report.event_type, report.failed) == (transaction, 1, set())
    assert report.committed == {reference(ds) for ds in stored}


MALFORMED: dict[str, tuple[Callable[[Dataset], object], dict[str, Any], int]] = {
    "no Transaction UID": (lambda info: delattr(info, "TransactionUID"), {}, 0x0120),
    "empty Transaction UID": (lambda info: setattr(info, "TransactionUID", ""), {}, 0x0121),
    "malformed Transaction UID": (lambda info: setattr(info, "TransactionUID", "1.2.x"), {}, 0x0106),
    "no Referenced SOP Sequence": (lambda info: delattr(info, "ReferencedSOPSequence"), {}, 0x0120),
    "empty Referenced SOP Sequence": (lambda info: setattr(info, "ReferencedSOPSequence", []), {}, 0x0121),
    "an item without SOP Instance UID": (
        lambda info: delattr(info.ReferencedSOPSequence[0], "ReferencedSOPInstanceUID"), {}, 0x0120),
    "an item with a malformed SOP Class UID": (
        lambda info: setattr(info.ReferencedSOPSequence[0], "ReferencedSOPClassUID", "1..2"), {}, 0x0106),
    "action type 2": (lambda info: None, {"action_type": 2}, 0x0123),
    "another SOP instance than the well-known one": (lambda info: None, {"instance_uid": "1.2.3.4"}, 0x0112),
}


def test_requests_the_requester_goes_on_sending_are_answered_while_its_report_goes_out(
        verifying: tuple[Gateway, int]) -> None:
    """The report goes out between the requester's requests, and only its answer is taken for one: a
    C-ECHO arriving meanwhile is served, not mistaken for the answer (which aborted the association)."""
    _, port = verifying
    modality = Modality()
    assoc = modality.associate(port)
    try:
        stored, transaction = store_and_request(assoc, 2)
        echoes: list[object] = []
        deadline = time.monotonic() + 20
        while modality.reports.empty() and time.monotonic() < deadline:
            echoes.append(assoc.send_c_echo().get("Status"))
        later = store(assoc, 1)  # the association still serves
        assert assoc.is_established
        report = modality.report(1)
    finally:
        assoc.release()
    assert echoes and set(echoes) == {0x0000}
    assert (report.transaction_uid, report.event_type) == (transaction, 1)
    assert report.committed == {reference(ds) for ds in stored}
    assert later


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # the malformed UIDs, on purpose
def test_malformed_requests_get_their_failure_status_and_no_report(verifying: tuple[Gateway, int]) -> None:
    _, port = verifying
    modality = Modality()
    assoc = modality.associate(port)
    try:
        [ds] = store(assoc, 1)
        statuses = {case: request(assoc, uid(), [reference(ds)], edit, **options)
                    for case, (edit, options, _) in MALFORMED.items()}
        # the association still works, and the only report is that of the valid request
        valid = uid()
        assert request(assoc, valid, [reference(ds)]) == 0x0000
        report = modality.report()
    finally:
        assoc.release()
    assert {case: f"0x{status:04X}" for case, status in statuses.items()} == {
        case: f"0x{status:04X}" for case, (_, _, status) in MALFORMED.items()}
    assert report.transaction_uid == valid
    assert modality.reports.empty()


def test_an_instance_not_yet_verified_is_not_reported_committed(impatient: tuple[Gateway, int]) -> None:
    _, port = impatient
    modality = Modality()
    assoc = modality.associate(port)
    try:
        stored, transaction = store_and_request(assoc, 2)
        # nothing is verified: the report waits the whole DICOMGW_DIMSE_COMMITMENT_WAIT_SECONDS (2)
        with pytest.raises(queue.Empty):
            modality.reports.get(timeout=1)
        report = modality.report()
    finally:
        assoc.release()
    assert (report.transaction_uid, report.event_type, report.committed) == (transaction, 2, set())
    assert report.failed == {(*reference(ds), 0x0110) for ds in stored}


def test_report_waits_for_verification_and_goes_to_the_configured_peer_when_the_requester_has_left(
        held: Held) -> None:
    modality = Modality("LISTENER")
    assoc = modality.associate(held.port)
    stored = store(assoc, 2)
    transaction = uid()
    assert request(assoc, transaction, [reference(ds) for ds in stored]) == 0x0000
    assoc.release()
    with modality.listening(held.peers["LISTENER"]):
        with pytest.raises(queue.Empty):
            modality.reports.get(timeout=1)  # stored but not verified: no report yet
        verify_now(held.gw, stored)
        report = modality.report()
    assert (report.transaction_uid, report.event_type, report.failed) == (transaction, 1, set())
    assert report.committed == {reference(ds) for ds in stored}
    assert report.requestor == "DICOMGW"  # the gateway's own association, the gateway as SCP
    assert report.scp_role_proposed


def test_a_refused_report_is_sent_again_until_the_peer_listens(held: Held) -> None:
    modality = Modality("LATE")
    assoc = modality.associate(held.port)
    stored = store(assoc, 1)
    transaction = uid()
    assert request(assoc, transaction, [reference(stored[0])]) == 0x0000
    assoc.release()
    verify_now(held.gw, stored)
    # nobody listens at LATE's address yet: the gateway says it will try again
    wait_for(lambda: "trying again" in held.gw.log.read_text(), 20, log=held.gw.log)
    with modality.listening(held.peers["LATE"]):
        report = modality.report()
    assert (report.transaction_uid, report.event_type) == (transaction, 1)
    assert report.committed == {reference(stored[0])}


def test_a_report_for_an_ae_without_address_is_kept_and_sent_on_its_next_association(held: Held) -> None:
    modality = Modality("NOPEER")  # not in DICOMGW_DIMSE_PEERS
    assoc = modality.associate(held.port)
    stored = store(assoc, 1)
    first = uid()
    assert request(assoc, first, [reference(stored[0])]) == 0x0000
    assoc.release()
    verify_now(held.gw, stored)
    wait_for(lambda: "kept, not delivered" in held.gw.log.read_text(), 20, log=held.gw.log)
    assoc = modality.associate(held.port)
    try:
        second = uid()
        assert request(assoc, second, [reference(stored[0])]) == 0x0000
        reports = [modality.report(), modality.report()]
    finally:
        assoc.release()
    assert [(r.transaction_uid, r.event_type) for r in reports] == [(first, 1), (second, 1)]


def _original(verify_status: str, replica_status: str = "pending",
              sop_class_uid: str = CTImageStorage) -> IndexedOriginal:
    return IndexedOriginal(sop_class_uid, "1.2.3", verify_status, replica_status)


def test_committed_needs_a_verified_checksum_and_with_a_replica_a_verified_replica_copy() -> None:
    assert commitment_state(CTImageStorage, None, replica=False) == 0x0112
    assert commitment_state(MRImageStorage, _original("verified"), replica=False) == 0x0119
    assert commitment_state(CTImageStorage, _original("verified"), replica=False) == 0x0000
    assert commitment_state(CTImageStorage, _original("repaired"), replica=False) == 0x0000
    for not_yet in ("pending", "mismatch", "missing"):  # the worker may still verify or repair it
        assert commitment_state(CTImageStorage, _original(not_yet), replica=False) is None
    assert commitment_state(CTImageStorage, _original("lost"), replica=False) == 0x0110
    assert commitment_state(CTImageStorage, _original("verified", "pending"), replica=True) is None
    assert commitment_state(CTImageStorage, _original("verified", "mismatch"), replica=True) is None
    assert commitment_state(CTImageStorage, _original("verified", "replicated"), replica=True) == 0x0000
    assert commitment_state(CTImageStorage, _original("pending", "replicated"), replica=True) is None
