"""Storing originals: parse, check, store and index received instances (STOW-RS and DIMSE alike).

Each part is parsed and PUT as soon as it has arrived (a bounded number at once) while the rest of the
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
    StorageUnavailable,
    StudyInstanceUIDMismatch,
)
from dicomgw.index.repository import DEFAULT, StoredObject
from dicomgw.metrics import STOW_BYTES, STOW_INSTANCES
from dicomgw.multipart import SpooledPart, parse_media_type
from dicomgw.runtime import Runtime
from dicomgw.storage import original_key

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
        if not self.failed:
            return 200
        return 202 if self.succeeded else 409


class KnownDigests:
    """The duplicate look-ups of one request: none for a study the index does not hold yet, and the
    others batched (parts that ask while a query is out share the next one).

    A look-up per part cost a database round trip and a pooled connection each; with many parts in
    flight they queued for connections longer than the parts took to parse and store. A new study
    (what a PACS forwards all day) cannot hold a duplicate; an instance whose UID is indexed under
    another study is still caught by the index commit, which refuses it and removes its object.
    """

    def __init__(self, runtime: Runtime, partition: str) -> None:
        self.runtime = runtime
        self.partition = partition
        self._studies: dict[str, asyncio.Task[bool]] = {}
        self._waiting: dict[str, list[asyncio.Future[bytes | None]]] = {}
        self._drain: asyncio.Task[None] | None = None

    async def sha256(self, study_uid: str, sop_uid: str) -> bytes | None:
        """SHA-256 of the indexed original of ``sop_uid`` in the partition, or None."""
        if study_uid not in self._studies:
            self._studies[study_uid] = asyncio.create_task(
                self.runtime.index.has_study(study_uid, self.partition))
        if not await self._studies[study_uid]:
            return None
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(sop_uid, []).append(future)
        if self._drain is None or self._drain.done():
            self._drain = asyncio.create_task(self._answer())
        return await future

    async def _answer(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, {}
            try:
                known = await self.runtime.index.known_sha256(list(batch), self.partition)
            except Exception as exc:
                for futures in batch.values():
                    for f in futures:
                        if not f.done():
                            f.set_exception(exc)
                continue
            for uid, futures in batch.items():
                for f in futures:
                    if not f.done():
                        f.set_result(known.get(uid))


async def _store_part(runtime: Runtime, part: SpooledPart, study_uid: str | None,
                      partition: str, digests: KnownDigests) -> PartResult:
    result = PartResult(index=part.index)
    try:
        media = parse_media_type(part.content_type or "application/dicom")[0]
        if media not in DICOM_PART_TYPES:
            raise CannotUnderstand(f"part {part.index} has Content-Type {media}, not application/dicom")
        if part.size == 0:
            raise CannotUnderstand(f"part {part.index} is empty")
        parsed: ParsedInstance = await asyncio.to_thread(parse_instance, part.path)
        result.sop_class_uid = parsed.sop_class_uid
        result.sop_instance_uid = parsed.sop_instance_uid
        result.study_instance_uid = parsed.study_instance_uid
        result.series_instance_uid = parsed.series_instance_uid
        if study_uid is not None and parsed.study_instance_uid != study_uid:
            raise StudyInstanceUIDMismatch(
                f"part {part.index} belongs to another study than the request URL names"
            )
        known = await digests.sha256(parsed.study_instance_uid, parsed.sop_instance_uid)
        if known is not None:
            if known != part.sha256:
                raise DuplicateInstance("an instance with this SOP Instance UID and other content "
                                        "is stored already")
            result.already_present = True
            return result
        key = original_key(parsed.study_instance_uid, parsed.series_instance_uid,
                           parsed.sop_instance_uid, part.sha256.hex(), partition)
        await runtime.store.put_file(key, part.path, sha256=part.sha256, size=part.size, hashed=True)
        result.stored = StoredObject(parsed=parsed, object_key=key, size=part.size, sha256=part.sha256)
    except InstanceRejected as exc:
        log.info("part %d refused (0x%04X): %s", part.index, exc.failure_reason, exc.detail)
        result.error = exc
    except StorageUnavailable as exc:
        result.error = OutOfResources(exc.detail)
    except OSError as exc:
        log.warning("part could not be stored: %s", exc.strerror)
        result.error = OutOfResources("the gateway could not write the instance")
    finally:
        part.discard()
    return result


async def store_parts(
    runtime: Runtime, parts: AsyncIterator[SpooledPart], study_uid: str | None,
    partition: str = DEFAULT,
) -> StowOutcome:
    """Store every part into ``partition``, then index the stored ones in one transaction."""
    limit = asyncio.Semaphore(runtime.settings.storage.max_concurrency)
    tasks: list[asyncio.Task[PartResult]] = []
    digests = KnownDigests(runtime, partition)

    async def bounded(part: SpooledPart) -> PartResult:
        async with limit:
            return await _store_part(runtime, part, study_uid, partition, digests)

    try:
        async for part in parts:
            # Wait for a slot before reading further: back-pressure keeps the spool folder small.
            while sum(not t.done() for t in tasks) >= runtime.settings.storage.max_concurrency:
                await asyncio.wait([t for t in tasks if not t.done()],
                                   return_when=asyncio.FIRST_COMPLETED)
            tasks.append(asyncio.create_task(bounded(part)))
        results = list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
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
            STOW_INSTANCES.labels("stored", "").inc()
            if r.stored is not None:
                STOW_BYTES.inc(r.stored.size)
