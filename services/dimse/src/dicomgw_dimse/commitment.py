"""Storage Commitment Push Model SCP (PS3.4 Annex J) of the DIMSE front door: N-ACTION, N-EVENT-REPORT.

A PACS deletes its copy only once the archive commits to keeping an instance. An N-ACTION asking to
commit instances is answered at once, and an N-EVENT-REPORT follows when every instance is committed
(indexed, its original's SHA-256 verified by the worker tier, and copied to the replica when one is
configured) or when ``DICOMGW_DIMSE_COMMITMENT_WAIT_SECONDS`` have passed; it goes back on the
requester's association while that is open, otherwise on a new association to the address
``DICOMGW_DIMSE_PEERS`` gives for the requester's AE title. The AE and its C-STORE handler are in scp.py.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any, TypeVar

from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role
from pynetdicom.dimse_primitives import N_EVENT_REPORT
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import A_RELEASE
from sqlalchemy import select

from dicomgw.index.models import Instance
from dicomgw.index.repository import DEFAULT
from dicomgw.runtime import Runtime

log = logging.getLogger("dicomgw.dimse")
T = TypeVar("T")

SUCCESS = 0x0000

# Storage Commitment Push Model (PS3.4 Annex J): the SOP class, its well-known SOP instance, the one
# action (Request Storage Commitment) and the two events of its N-EVENT-REPORT
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_STORAGE_COMMITMENT = 1
ALL_COMMITTED, SOME_FAILED = 1, 2
# N-ACTION statuses (PS3.7 Annex C) and Failure Reasons of the Failed SOP Sequence (PS3.4 J.3.3.1.1)
INVALID_ATTRIBUTE_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
INVALID_ARGUMENT_VALUE = 0x0115
CLASS_INSTANCE_CONFLICT = 0x0119
MISSING_ATTRIBUTE = 0x0120
MISSING_ATTRIBUTE_VALUE = 0x0121
NO_SUCH_ACTION = 0x0123
# what the worker tier writes in verify_status once an original's SHA-256 has been checked and found good
VERIFIED = ("verified", "repaired")
# how often the index is asked again about instances not yet committed
COMMITMENT_POLL_SECONDS = 0.5
# SOP Instance UIDs per index look-up (bound parameters per statement stay few)
LOOKUP_CHUNK = 500
# a new association that fails is tried again this many times in all, after 1, 2, 4... seconds
DELIVERY_ATTEMPTS = 5
DELIVERY_FIRST_BACKOFF_SECONDS = 1.0
# ACSE, DIMSE and network timeouts of the associations the report is sent on
DELIVERY_TIMEOUT_SECONDS = 30
# reports kept per AE title when they cannot be delivered (the oldest is dropped beyond this)
UNDELIVERED_KEPT_PER_AE = 100


class CommitmentRefused(Exception):
    """An N-ACTION that cannot be accepted: its status and an Error Comment (LO, 64 characters)."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment[:64]


@dataclass(frozen=True)
class CommitmentRequest:
    """An accepted Request Storage Commitment, waiting for its report."""

    transaction_uid: str
    # (Referenced SOP Class UID, Referenced SOP Instance UID), in the request's order, repeats dropped
    references: tuple[tuple[str, str], ...]
    peer: tuple[str, str]  # calling AE title, address
    assoc: Any  # the association it came on: the report goes back on it while it is open


@dataclass(frozen=True)
class CommitmentReport:
    """The outcome of one transaction: the N-EVENT-REPORT's Event Information."""

    transaction_uid: str
    committed: tuple[tuple[str, str], ...]
    failed: tuple[tuple[str, str, int], ...]  # ... and the Failure Reason
    studies: tuple[str, ...]  # of the referenced instances found in the index (for the audit trail)

    @property
    def event_type(self) -> int:
        return SOME_FAILED if self.failed else ALL_COMMITTED

    def event_information(self) -> Dataset:
        ds = Dataset()
        ds.TransactionUID = self.transaction_uid
        if self.committed:
            ds.ReferencedSOPSequence = [_reference(sop_class, sop_instance)
                                        for sop_class, sop_instance in self.committed]
        if self.failed:
            ds.FailedSOPSequence = [_reference(sop_class, sop_instance, reason)
                                    for sop_class, sop_instance, reason in self.failed]
        return ds

    def summary(self) -> str:
        reasons = Counter(f"0x{reason:04X}" for _, _, reason in self.failed)
        failed = f" ({', '.join(f'{n} {code}' for code, n in sorted(reasons.items()))})" if reasons else ""
        return f"{len(self.committed)} committed, {len(self.failed)} failed{failed}"


def _reference(sop_class_uid: str, sop_instance_uid: str, failure_reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class_uid
    item.ReferencedSOPInstanceUID = sop_instance_uid
    if failure_reason is not None:
        item.FailureReason = failure_reason
    return item


@dataclass(frozen=True)
class IndexedOriginal:
    """What the index says of a referenced instance."""

    sop_class_uid: str
    study_instance_uid: str
    verify_status: str
    replica_status: str


def commitment_state(sop_class_uid: str, original: IndexedOriginal | None, *, replica: bool) -> int | None:
    """0x0000 when the instance is committed, the Failure Reason when it cannot become so, None while it
    may still (stored, not yet verified or replicated).

    Committed: indexed (so its original was durable before it was acknowledged), its SHA-256 verified
    by the worker tier, and, with a replica configured, its replica copy made and read back intact.
    """
    if original is None:
        return NO_SUCH_OBJECT_INSTANCE
    if original.sop_class_uid != sop_class_uid:
        return CLASS_INSTANCE_CONFLICT
    if original.verify_status == "lost":  # no good copy left: it will not become committed
        return PROCESSING_FAILURE
    if original.verify_status in VERIFIED and (not replica or original.replica_status == "replicated"):
        return SUCCESS
    return None


def _required_uid(ds: Dataset, keyword: str) -> str:
    if keyword not in ds:
        raise CommitmentRefused(MISSING_ATTRIBUTE, f"{keyword} {Tag(keyword)} is missing")
    value = ds[keyword].value
    if value is None or value == "":
        raise CommitmentRefused(MISSING_ATTRIBUTE_VALUE, f"{keyword} has no value")
    if not isinstance(value, str) or not UID(value).is_valid:
        raise CommitmentRefused(INVALID_ATTRIBUTE_VALUE, f"{keyword} is not a valid UID")
    return str(value)


def parse_request(event: Any) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The Transaction UID and references of an N-ACTION Request Storage Commitment (PS3.4 J.3.2),
    or CommitmentRefused with the status to answer."""
    if event.action_type != REQUEST_STORAGE_COMMITMENT:
        raise CommitmentRefused(NO_SUCH_ACTION, f"no action type {event.action_type}: only 1 (commit)")
    if str(event.request.RequestedSOPInstanceUID) != STORAGE_COMMITMENT_INSTANCE:
        raise CommitmentRefused(NO_SUCH_OBJECT_INSTANCE, f"the SOP instance is {STORAGE_COMMITMENT_INSTANCE}")
    try:
        info = event.action_information  # decoded lazily: any element may fail to decode
        transaction_uid = _required_uid(info, "TransactionUID")
        if "ReferencedSOPSequence" not in info:
            raise CommitmentRefused(MISSING_ATTRIBUTE, "ReferencedSOPSequence (0008,1199) is missing")
        if info["ReferencedSOPSequence"].VR != "SQ":
            raise CommitmentRefused(INVALID_ATTRIBUTE_VALUE, "ReferencedSOPSequence is not a sequence")
        items = info.ReferencedSOPSequence
        if not items:
            raise CommitmentRefused(MISSING_ATTRIBUTE_VALUE, "ReferencedSOPSequence has no items")
        references = tuple(dict.fromkeys(
            (_required_uid(item, "ReferencedSOPClassUID"), _required_uid(item, "ReferencedSOPInstanceUID"))
            for item in items))
    except CommitmentRefused:
        raise
    except Exception as exc:
        raise CommitmentRefused(INVALID_ARGUMENT_VALUE, "the Action Information cannot be decoded") from exc
    return transaction_uid, references


def parse_peers(peers: dict[str, str]) -> dict[str, tuple[str, int]]:
    """``DICOMGW_DIMSE_PEERS`` as (host, port) per AE title; "[v6 address]:port" works too."""
    parsed = {}
    for ae_title, address in peers.items():
        host, _, port = address.strip().rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"DICOMGW_DIMSE_PEERS: {ae_title!r} needs host:port, not {address!r}")
        parsed[ae_title.strip()] = (host, int(port))
    return parsed


class StorageCommitmentSCP:
    """Storage Commitment Push Model SCP: the N-ACTION in pynetdicom's threads, the rest on the loop.

    An accepted request polls the index until every instance is committed or the wait is over, then
    sends the report. A report that cannot be delivered (no address for the AE title, or the peer
    refused every attempt) is logged, audited and kept in memory: it goes out on the AE's next
    association that asks for a commitment. Kept reports do not survive a restart.
    """

    def __init__(self, runtime: Runtime, loop: asyncio.AbstractEventLoop, audit: Callable[..., None],
                 calling_peer: Callable[[Any], tuple[str, str]]) -> None:
        self.runtime = runtime
        self.loop = loop
        # the storage SCP's: one audit trail and one notion of the calling AE for the front door
        self.audit = audit
        self.calling_peer = calling_peer
        self.peers = parse_peers(runtime.settings.dimse.peers)
        self._jobs: set[asyncio.Task[None]] = set()
        self._undelivered: dict[str, list[CommitmentReport]] = {}
        # one report at a time on a requester's association (it may have several requests running)
        self._sending: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()
        self._message_ids = itertools.count(1)

    # --- pynetdicom's threads --------------------------------------------------------------------

    def handle_n_action(self, event: Any) -> tuple[int | Dataset, None]:
        peer = self.calling_peer(event)
        try:
            transaction_uid, references = parse_request(event)
        except CommitmentRefused as exc:
            log.info("storage commitment request refused (0x%04X): %s", exc.status, exc.comment,
                     extra={"calling_ae": peer[0]})
            status = Dataset()
            status.Status = exc.status
            status.ErrorComment = exc.comment
            return status, None
        request = CommitmentRequest(transaction_uid, references, peer, event.assoc)
        # the report cannot overtake this answer on the association: it waits for the association's
        # thread to be done with this request (_send_on_requesting_association)
        self.loop.call_soon_threadsafe(self._start, request)
        log.info("storage commitment requested", extra={"calling_ae": peer[0],
                                                         "instances": len(references)})
        return SUCCESS, None

    # --- the event loop ----------------------------------------------------------------------------

    def _start(self, request: CommitmentRequest) -> None:
        job = self.loop.create_task(self._commit(request), name="dicomgw-storage-commitment")
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _commit(self, request: CommitmentRequest) -> None:
        try:
            # reports this AE could not be sent before go out first, on the association it came back on
            for report in self._undelivered.pop(request.peer[0], []):
                await self._deliver(report, request.peer, request.assoc)
            report = await self.resolve(request)
            await self._deliver(report, request.peer, request.assoc)
        except Exception:
            log.exception("storage commitment failed", extra={"calling_ae": request.peer[0]})

    async def resolve(self, request: CommitmentRequest) -> CommitmentReport:
        """Which referenced instances are committed: stored-but-unverified ones are waited for, up to
        ``commitment_wait_seconds``, then reported failed (0x0110)."""
        deadline = self.loop.time() + self.runtime.settings.dimse.commitment_wait_seconds
        replica = self.runtime.replica is not None
        outcome: dict[tuple[str, str], int] = {}
        studies: set[str] = set()
        waiting = list(request.references)
        while True:
            try:
                found = await self._originals([sop_instance for _, sop_instance in waiting])
            except Exception:
                # the index away: ask again until the wait is over (then they are processing failures)
                log.warning("storage commitment: the index could not be read", exc_info=True)
            else:
                still = []
                for reference in waiting:
                    original = found.get(reference[1])
                    if original is not None:
                        studies.add(original.study_instance_uid)
                    state = commitment_state(reference[0], original, replica=replica)
                    if state is None:
                        still.append(reference)
                    else:
                        outcome[reference] = state
                waiting = still
            left = deadline - self.loop.time()
            if not waiting or left <= 0:
                break
            await asyncio.sleep(min(COMMITMENT_POLL_SECONDS, left))
        for reference in waiting:
            outcome[reference] = PROCESSING_FAILURE  # not verified within the wait: never "committed"
        return CommitmentReport(
            request.transaction_uid,
            committed=tuple(r for r in request.references if outcome[r] == SUCCESS),
            failed=tuple((*r, outcome[r]) for r in request.references if outcome[r] != SUCCESS),
            studies=tuple(sorted(studies)))

    async def _originals(self, sop_instance_uids: Sequence[str]) -> dict[str, IndexedOriginal]:
        """The index rows of these instances in the partition the DIMSE front door stores into."""
        unique = sorted(set(sop_instance_uids))
        found: dict[str, IndexedOriginal] = {}
        async with self.runtime.engine.connect() as connection:
            for start in range(0, len(unique), LOOKUP_CHUNK):
                rows = await connection.execute(
                    select(Instance.sop_instance_uid, Instance.sop_class_uid, Instance.study_instance_uid,
                           Instance.verify_status, Instance.replica_status)
                    .where(Instance.partition_name == DEFAULT,
                           Instance.sop_instance_uid.in_(unique[start:start + LOOKUP_CHUNK])))
                for row in rows:
                    found[row.sop_instance_uid] = IndexedOriginal(
                        row.sop_class_uid, row.study_instance_uid, row.verify_status, row.replica_status)
        return found

    async def _deliver(self, report: CommitmentReport, peer: tuple[str, str], assoc: Any) -> None:
        """Send the report on ``assoc`` while it is open, otherwise on a new association (PS3.4 J.3.3);
        log and audit the outcome, and keep a report that could not be delivered."""
        ae_title = peer[0]
        delivered: str | None = None
        if assoc.is_established:
            async with self._sending.setdefault(assoc, asyncio.Lock()):
                if await asyncio.to_thread(self._send_on_requesting_association, assoc, report):
                    delivered = "the requesting association"
        if delivered is None:
            if (address := self.peers.get(ae_title)) is None:
                log.error("storage commitment report not delivered: the requesting association is "
                          "gone and DICOMGW_DIMSE_PEERS has no address for its AE title",
                          extra={"calling_ae": ae_title})
            else:
                delivered = await self._deliver_on_new_association(report, ae_title, address)
        if delivered is None:
            self._keep(ae_title, report)
        log.info("storage commitment report %s", "sent" if delivered else "kept, not delivered",
                 extra={"calling_ae": ae_title, "event_type": report.event_type,
                        "committed": len(report.committed), "failed": len(report.failed),
                        "failure_reasons": sorted({f"0x{r:04X}" for *_, r in report.failed}),
                        "delivered_on": delivered})
        log.debug("storage commitment transaction", extra={"transaction_uid": report.transaction_uid})
        self.audit("transferred", peer, method="N-ACTION",
                   outcome=8 if delivered is None else 4 if report.failed else 0, studies=report.studies,
                   detail=f"storage commitment {report.transaction_uid}: {report.summary()}; report "
                          + (f"sent on {delivered}" if delivered else "not delivered, kept"))

    async def _deliver_on_new_association(self, report: CommitmentReport, ae_title: str,
                                          address: tuple[str, int]) -> str | None:
        delay = DELIVERY_FIRST_BACKOFF_SECONDS
        for attempt in range(1, DELIVERY_ATTEMPTS + 1):
            if await asyncio.to_thread(self._send_on_new_association, report, ae_title, address):
                return f"a new association to {address[0]}:{address[1]}"
            if attempt < DELIVERY_ATTEMPTS:
                log.warning("storage commitment report not delivered, trying again",
                            extra={"calling_ae": ae_title, "attempt": attempt, "retry_in_seconds": delay})
                await asyncio.sleep(delay)
                delay *= 2
        log.error("storage commitment report not delivered: the requester refused every association",
                  extra={"calling_ae": ae_title, "attempts": DELIVERY_ATTEMPTS})
        return None

    def _keep(self, ae_title: str, report: CommitmentReport) -> None:
        kept = self._undelivered.setdefault(ae_title, [])
        kept.append(report)
        if len(kept) > UNDELIVERED_KEPT_PER_AE:
            kept.pop(0)
            log.error("storage commitment: the oldest undelivered report of an AE title was dropped",
                      extra={"calling_ae": ae_title})

    # --- threads of the default executor ---------------------------------------------------------

    def _next_message_id(self) -> int:
        return next(self._message_ids) % 0x10000 or 1

    def _send_on_requesting_association(self, assoc: Any, report: CommitmentReport) -> bool:
        """Send the report on the association the request came on; True once the requester took it.

        pynetdicom's ``send_n_event_report`` suits an idle association only: it may send while the
        association's thread is still answering a request (two messages' fragments interleaved), and
        takes whatever message arrives next for the answer (a C-STORE the requester sends meanwhile
        makes it abort the association). So the association's reactor is first parked between two
        requests, only the answer to the report is taken off the message queue (other requests stay
        there, in order, for the reactor), and a release or abort from the requester ends the wait.
        This leans on pynetdicom's internals (its reactor checkpoint and message queue), pinned in
        uv.lock and covered by tests/integration/test_storage_commitment.py.
        """
        context = next((cx for cx in assoc.accepted_contexts if cx.abstract_syntax == STORAGE_COMMITMENT),
                       None)
        if context is None:
            return False
        checkpoint = assoc._reactor_checkpoint
        checkpoint.clear()
        try:
            # parked: waiting on its checkpoint at the top of its loop, between requests
            if not _wait_while_open(assoc, lambda: bool(checkpoint._cond._waiters)) or _closing(assoc):
                return False
            msg_id = self._next_message_id()
            assoc.dimse.send_msg(_event_report(report, msg_id, context.transfer_syntax[0]),
                                 context.context_id)
            answer = _wait_while_open(assoc, lambda: _take_answer(assoc, msg_id))
        finally:
            checkpoint.set()
        if answer is None:
            log.info("storage commitment report not answered on the requesting association")
            return False
        return _accepted(answer.Status)

    def _send_on_new_association(self, report: CommitmentReport, ae_title: str,
                                 address: tuple[str, int]) -> bool:
        """Associate with the requester (it is the acceptor, and the SCU of the SOP class) and send the
        report; True once it took it."""
        settings = self.runtime.settings.dimse
        ae = AE(ae_title=settings.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = DELIVERY_TIMEOUT_SECONDS
        ae.maximum_pdu_size = settings.max_pdu
        ae.add_requested_context(STORAGE_COMMITMENT, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        # PS3.4 J.3.3.1.2: the association's requestor proposes the SCP role (the default is the SCU's)
        role = build_role(STORAGE_COMMITMENT, scp_role=True)
        try:
            assoc = ae.associate(address[0], address[1], ae_title=ae_title, ext_neg=[role])
        except OSError as exc:
            log.info("storage commitment: no association with the requester: %s", exc)
            return False
        if not assoc.is_established:
            return False
        try:
            # nothing else happens on this association: pynetdicom's own request and wait are right
            status, _ = assoc.send_n_event_report(
                report.event_information(), report.event_type, STORAGE_COMMITMENT,
                STORAGE_COMMITMENT_INSTANCE, msg_id=self._next_message_id())
        except (RuntimeError, ValueError) as exc:  # ended meanwhile, or the context was refused
            log.info("storage commitment report could not be sent: %s", exc)
            return False
        finally:
            if assoc.is_established:
                assoc.release()
        return _accepted(status.get("Status"))  # None: no answer (timed out, aborted)

    async def close(self) -> None:
        """Stop waiting; what was not reported yet is logged (it is lost with this process)."""
        jobs = list(self._jobs)
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        kept = sum(len(reports) for reports in self._undelivered.values())
        if jobs or kept:
            log.warning("storage commitment reports not sent at shutdown",
                        extra={"in_progress": len(jobs), "undelivered": kept})


def _accepted(status: int | None) -> bool:
    """Whether the requester's answer to a report means it took it; a failure (some SCUs refuse a
    report on the association of their N-ACTION) sends it the other way, or again later."""
    if status is not None and status != SUCCESS:
        log.warning("the requester answered a storage commitment report with 0x%04X", status)
    return status == SUCCESS


def _event_report(report: CommitmentReport, msg_id: int, transfer_syntax: UID) -> N_EVENT_REPORT:
    request = N_EVENT_REPORT()
    request.MessageID = msg_id
    request.AffectedSOPClassUID = STORAGE_COMMITMENT
    request.AffectedSOPInstanceUID = STORAGE_COMMITMENT_INSTANCE
    request.EventTypeID = report.event_type
    encoded = encode(report.event_information(), transfer_syntax.is_implicit_VR,
                     transfer_syntax.is_little_endian, transfer_syntax.is_deflated)
    if encoded is None:
        raise ValueError("the Event Information could not be encoded")
    request.EventInformation = BytesIO(encoded)
    return request


def _take_answer(assoc: Any, msg_id: int) -> N_EVENT_REPORT | None:
    """Take the answer to report ``msg_id`` off the association's message queue, if it is there."""
    messages = assoc.dimse.msg_queue
    with messages.mutex:
        for item in messages.queue:
            message = item[1]
            if isinstance(message, N_EVENT_REPORT) and message.MessageIDBeingRespondedTo == msg_id:
                messages.queue.remove(item)
                return message
    return None


def _closing(assoc: Any) -> bool:
    """The association has ended, or the requester asked to release or abort it (the parked reactor
    has not acted on that yet): it will not answer a report."""
    return (not assoc.is_established or not assoc.dul.is_alive() or assoc.acse.is_aborted()
            or isinstance(assoc.dul.peek_next_pdu(), A_RELEASE))


def _wait_while_open(assoc: Any, ready: Callable[[], T]) -> T | None:
    """Poll ``ready`` until it gives something, the association is closing, or
    DELIVERY_TIMEOUT_SECONDS pass."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if value := ready():
            return value
        if _closing(assoc):
            return None
        time.sleep(0.002)
    return None
