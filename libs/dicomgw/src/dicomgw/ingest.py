"""Storing originals: parse, check, store and index received instances (STOW-RS and DIMSE alike).

Parts are parsed and stored a batch at a time as soon as the batch has arrived, while the rest of the
body streams in; the index rows of every stored part are committed in one transaction at the end, and
only then is anything reported in ReferencedSOPSequence (acknowledged means durable).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from dicomgw.dicom.parse import ParsedInstance, parse_instance
from dicomgw.errors import (
    CannotUnderstand,
    DicomgwError,
    DuplicateInstance,
    InstanceRejected,
    OutOfResources,
    StudyInstanceUIDMismatch,
)
from dicomgw.index.repository import DEFAULT, StoredObject
from dicomgw.metrics import STOW_BYTES, STOW_INSTANCES
from dicomgw.multipart import SpooledPart, parse_media_type
from dicomgw.runtime import Runtime
from dicomgw.storage import FileToStore, original_key

log = logging.getLogger("dicomgw.ingest")

DICOM_PART_TYPES = {"application/dicom"}


@dataclass
class PartResult:
    index: int
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    stored: StoredObject | None = None
    error: DicomgwError | None = None
    already_present: bool = False
    # what is wrong with an instance archived all the same (identified, but not readable throughout)
    damaged: str | None = None


@dataclass
class StowOutcome:
    results: list[PartResult]

    @property
    def succeeded(self) -> list[PartResult]:
        return [r for r in self.results if r.error is None]

    @property
    def failed(self) -> list[PartResult]:
        return [r for r in self.results if r.error is not None]

    @property
    def status_code(self) -> int:
        """PS3.18 10.5.3: 200 all stored, 202 some, 409 none; 503 when none could be stored and the
        request may succeed later (a back end away for some of its instances), which a forwarder
        retries, where it would take 409 as final."""
        if not self.failed:
            return 200
        if self.succeeded:
            return 202
        return 503 if self.retryable else 409

    @property
    def retryable(self) -> bool:
        return any(r.error is not None and r.error.status == 503 for r in self.results)


# PS3.18 WarningReason of an instance archived although not all of it could be read: "Data Set does
# not match SOP Class" (its Pixel Data runs past the end, a value does not decode...)
DAMAGED_WARNING = 0xB007

# a batch closes at this many parts or bytes (or at the end of the body)
BATCH_PARTS = 16
BATCH_BYTES = 32 << 20
# batches of one request being parsed and stored at once, while the body streams in
BATCHES_IN_FLIGHT = 2
# parts up to this size (nearly every CT, MR or PET slice: a few milliseconds of parsing) are parsed on
# the event loop, larger ones in a thread. A thread parsing while the loop reads the network made the two
# hand the interpreter lock to each other every few milliseconds (75 futex calls per instance): parsed
# on the loop, STOW used 10 % less CPU per instance and stored 10-30 % more per second.
INLINE_PARSE_BYTES = 4 << 20


def _check(part: SpooledPart, study_uid: str | None) -> tuple[PartResult, ParsedInstance | None]:
    """Parse one spooled part and check what can be checked without the index."""
    result = PartResult(index=part.index)
    try:
        media = parse_media_type(part.content_type or "application/dicom")[0]
        if media not in DICOM_PART_TYPES:
            raise CannotUnderstand(f"part {part.index} has Content-Type {media}, not application/dicom")
        if part.size == 0:
            raise CannotUnderstand(f"part {part.index} is empty")
        parsed = parse_instance(part.path)
        result.sop_class_uid = parsed.sop_class_uid
        result.sop_instance_uid = parsed.sop_instance_uid
        result.study_instance_uid = parsed.study_instance_uid
        result.series_instance_uid = parsed.series_instance_uid
        result.damaged = parsed.layout.get("damaged")
        if result.damaged:
            log.warning("part %d archived as received, damaged: %s", part.index, result.damaged)
        if study_uid is not None and parsed.study_instance_uid != study_uid:
            raise StudyInstanceUIDMismatch(
                f"part {part.index} belongs to another study than the request URL names"
            )
        return result, parsed
    except InstanceRejected as exc:
        log.info("part %d refused (0x%04X): %s", part.index, exc.failure_reason, exc.detail)
        result.error = exc
    except OSError as exc:
        log.warning("part could not be read: %s", exc.strerror)
        result.error = OutOfResources("the gateway could not read the instance")
    return result, None


async def _store_batch(runtime: Runtime, parts: list[SpooledPart], study_uid: str | None,
                       partition: str) -> list[PartResult]:
    """Parse, de-duplicate and store a batch of parts: one index look-up for all their UIDs, one call
    to the store for all the new ones.

    Per part, the look-ups and the hops to threads cost more than the work itself (a futex storm of
    threads handing the interpreter lock to each other, and a queue for pooled connections).
    """
    try:
        checked = []
        for part in parts:
            if part.size <= INLINE_PARSE_BYTES:
                checked.append(_check(part, study_uid))
                await asyncio.sleep(0)  # other requests of this process go in between parts
            else:
                checked.append(await asyncio.to_thread(_check, part, study_uid))
        valid = [(part, result, parsed) for part, (result, parsed) in zip(parts, checked, strict=True)
                 if parsed is not None]
        known = await runtime.index.known_sha256(
            sorted({parsed.sop_instance_uid for _, _, parsed in valid}), partition)
        new: list[tuple[SpooledPart, PartResult, ParsedInstance, str]] = []
        for part, result, parsed in valid:
            digest = known.get(parsed.sop_instance_uid)
            if digest is None:
                new.append((part, result, parsed, original_key(
                    parsed.study_instance_uid, parsed.series_instance_uid, parsed.sop_instance_uid,
                    part.sha256.hex(), partition)))
            elif digest == part.sha256:
                result.already_present = True
            else:
                result.error = DuplicateInstance("an instance with this SOP Instance UID and other "
                                                 "content is stored already")
        outcomes = await runtime.store.put_files(
            [FileToStore(key, part.path, part.sha256, part.size) for part, _, _, key in new],
            hashed=True)  # the spooler hashed each part as it wrote it
        for (part, result, parsed, key), error in zip(new, outcomes, strict=True):
            if error is None:
                result.stored = StoredObject(parsed=parsed, object_key=key, size=part.size,
                                             sha256=part.sha256)
            else:
                log.warning("part could not be stored: %s", error)
                result.error = OutOfResources("the gateway could not write the instance")
        return [result for result, _ in checked]
    finally:
        for part in parts:
            part.discard()


async def store_parts(
    runtime: Runtime, parts: AsyncIterator[SpooledPart], study_uid: str | None,
    partition: str = DEFAULT,
) -> StowOutcome:
    """Store every part into ``partition``, then index the stored ones in one transaction.

    Parts are stored a batch at a time (``BATCH_PARTS`` or ``BATCH_BYTES``) while the rest of the body
    streams in, at most ``BATCHES_IN_FLIGHT`` at once: back-pressure keeps the spool folder small.
    """
    tasks: list[asyncio.Task[list[PartResult]]] = []
    batch: list[SpooledPart] = []
    size = 0

    async def submit() -> None:
        nonlocal batch, size
        while sum(not t.done() for t in tasks) >= BATCHES_IN_FLIGHT:
            await asyncio.wait([t for t in tasks if not t.done()], return_when=asyncio.FIRST_COMPLETED)
        tasks.append(asyncio.create_task(_store_batch(runtime, batch, study_uid, partition)))
        batch, size = [], 0

    try:
        async for part in parts:
            batch.append(part)
            size += part.size
            if len(batch) >= BATCH_PARTS or size >= BATCH_BYTES:
                await submit()
        if batch:
            await submit()
        results = [r for done in await asyncio.gather(*tasks) for r in done]
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for part in batch:
            part.discard()
        raise

    stored = [r for r in results if r.stored is not None]
    # one outcome per object, in order: two parts of one request may carry the same SOP Instance UID,
    # and each must be told its own fate (keyed by UID, the second part's "conflict" was applied to
    # the first, stored one too, and its object deleted under its index row)
    outcomes = await runtime.index.commit([r.stored for r in stored if r.stored is not None], partition)
    for r, outcome in zip(stored, outcomes, strict=True):
        assert r.stored is not None
        if outcome.status == "conflict" or (
            outcome.status == "present" and outcome.object_key != r.stored.object_key
        ):
            # Lost a race against a different object (or an equal one under another key): the
            # indexed original stays; this copy is not referenced by anything.
            await runtime.store.delete(r.stored.object_key)
        if outcome.status == "conflict":
            r.error = DuplicateInstance("an instance with this SOP Instance UID and other content "
                                        "is stored already")
        elif outcome.status == "present":
            r.already_present = True
    return StowOutcome(results)


def count_outcomes(outcome: StowOutcome) -> None:
    """Every part's fate, as metrics (reason codes only)."""
    for r in outcome.results:
        if r.error is not None:
            STOW_INSTANCES.labels("failed", f"0x{r.error.failure_reason:04X}").inc()
        elif r.already_present:
            STOW_INSTANCES.labels("present", "").inc()
        else:
            STOW_INSTANCES.labels("stored", f"0x{DAMAGED_WARNING:04X}" if r.damaged else "").inc()
            if r.stored is not None:
                STOW_BYTES.inc(r.stored.size)
