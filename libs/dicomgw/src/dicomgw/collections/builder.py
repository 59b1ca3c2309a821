"""Building research collections: a query over a source partition, de-identified into a read-only one.

A collection is defined once (source partition, QIDO-RS study query, de-identification profile, NIfTI
or not) and built in versions. Each version runs as outbox work, in steps of bounded length keyed
``{name}/{version}/{step}`` (the embedded loop and the Celery tier alike):

1. *plan*: the query's studies are searched in the source partition; every instance not in an earlier
   version becomes an item of this version (``collection_items``, pending);
2. *build* (as many steps as needed): each pending item's original is read, checked against its
   SHA-256, de-identified (``dicomgw.deid``), and stored into the collection's partition through the
   same path as STOW-RS (one index transaction per batch; verification and replication follow as
   for any instance). Burned-in candidates are left out and said why, unless the profile has
   ``clean-pixels``: then their burned-in text is found, redacted and proven gone
   (``dicomgw.deid.pixels``), or they are left out with the reason. A version built for review holds
   every image the cleaner looked at (kept de-identified next to the version's files, never in the
   partition) until a data manager publishes it (``publish``: approved ones stored, rejected ones left
   out), and is in state ``review`` meanwhile;
3. *finish*: the manifest (CSV and Parquet) of every instance up to this version, the report, and the
   NIfTI volumes when asked are written next to the partition's objects; the version is complete.
   Each series' geometry flag in the manifest is planned then, over the frames of all its instances
   (stored per item when it was de-identified), by the planner the client's dataset uses.

A crash anywhere leaves the outbox row in place: the step runs again, and what it redoes comes out
the same (pseudonyms and bytes are deterministic, the index takes an identical instance as present).
An item belongs to the version that first included it and is never changed once done, so what an
earlier version contained stays what it was; originals are only read.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import logging
import re
import secrets
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, astuple, dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pydicom
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from dicomgw import originals
from dicomgw.collections import manifest
from dicomgw.deid import Options, burned_in_candidate, deidentify
from dicomgw.deid.profile import SECONDARY_CAPTURE_PREFIX, pseudonymous_uid
from dicomgw.errors import BadRequest, Conflict, NotFound
from dicomgw.index.models import Collection, CollectionItem, CollectionVersion, Instance, OutboxItem
from dicomgw.index.qido import parse_query, search
from dicomgw.ingest import store_parts
from dicomgw.multipart import SpooledPart
from dicomgw.originals import Copy
from dicomgw.partitions import check_name
from dicomgw.runtime import Runtime
from dicomgw.storage import partition_prefix
from dicomgw_client import volume

log = logging.getLogger("dicomgw.collections")

TASK = "collect"
# the profile's names on the command line, and the Options field each one sets
PROFILE_OPTIONS = {
    "basic": None,
    "retain-longitudinal": "longitudinal_modified_dates",
    "retain-patient-characteristics": "patient_characteristics",
    "retain-device-identity": "device_identity",
    "clean-descriptors": "clean_descriptors",
    "clean-pixels": "clean_pixels",
}
# a build step stops after this many instances or seconds, whichever comes first, and queues the next
STEP_INSTANCES = 64
STEP_SECONDS = 30.0


def parse_profile(text: str) -> tuple[str, Options]:
    """``basic,retain-longitudinal`` as its canonical text and the de-identification Options."""
    names = [n.strip() for n in (text or "basic").split(",") if n.strip()]
    unknown = [n for n in names if n not in PROFILE_OPTIONS]
    if unknown:
        raise BadRequest(f"unknown profile option {', '.join(unknown)}; offered: "
                         f"{', '.join(PROFILE_OPTIONS)} (Retain UIDs is not offered: UIDs are always "
                         "replaced by keyed pseudonyms)")
    if "basic" not in names:
        names.insert(0, "basic")
    chosen = sorted(set(names), key=list(PROFILE_OPTIONS).index)
    values = {PROFILE_OPTIONS[n]: True for n in chosen if PROFILE_OPTIONS[n]}
    return ",".join(chosen), Options(**values)  # type: ignore[arg-type]


def artifact_key(name: str, version: int, filename: str) -> str:
    """Where a version's manifest, report and volumes live in the object store."""
    return f"{partition_prefix(name)}collection/v{version}/{filename}"


@dataclass(frozen=True)
class Definition:
    name: str
    source: str
    query: str
    profile: str
    nifti: bool
    # hold the cleaned images of the version being started for review (default: with clean-pixels);
    # not part of what the collection is, so it may differ from one version to the next
    review: bool = False

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Definition:
        name, source = body.get("name"), body.get("source", "default")
        query, profile, nifti = body.get("query", ""), body.get("profile", "basic"), body.get("nifti", False)
        review = body.get("review")
        if not isinstance(name, str) or not isinstance(source, str) or not isinstance(query, str) \
                or not isinstance(profile, str) or not isinstance(nifti, bool) \
                or not isinstance(review, bool | None):
            raise BadRequest('send {"name": "...", "source": "default", "query": "ModalitiesInStudy=MR", '
                             '"profile": "basic", "nifti": false, "review": null}')
        check_name(name)
        if name == source:
            raise BadRequest("a collection cannot be built from its own partition")
        study_query(query, source)  # refuse a bad query now, not in the worker
        canonical, options = parse_profile(profile)
        if review and not options.clean_pixels:
            raise BadRequest("review holds cleaned images: it needs the clean-pixels profile option")
        return cls(name, source, query.lstrip("?"), canonical, nifti,
                   options.clean_pixels if review is None else review)


def study_query(text: str, source: str, *, limit: int = 1000, offset: int = 0) -> Any:
    params = [(k, v) for k, v in parse_qsl(text.lstrip("?"), keep_blank_values=True)
              if k not in ("limit", "offset", "includefield")]
    query = parse_query("study", params, default_limit=limit, max_limit=limit, partition=source)
    query.offset = offset
    return query


# ---- definition, versions and status (the admin API) --------------------------------------------
async def define(runtime: Runtime, definition: Definition) -> dict[str, Any]:
    """Create the collection (and its read-only partition) or start its next version.

    The same definition again makes a new version that adds what is new; another definition under
    the same name is a 409. While a version is being built, asking again returns that version.
    """
    if await runtime.partitions.get(definition.source) is None:
        raise NotFound(f"no partition named {definition.source}")
    async with runtime.index.sessions() as session:
        existing = await session.get(Collection, definition.name)
    if existing is None:
        if await runtime.partitions.get(definition.name) is not None:
            raise Conflict(f"a partition named {definition.name} exists already")
        await runtime.partitions.create(
            definition.name, kind="collection", read_only=True,
            description=f"collection of {definition.source}: {definition.query or 'every study'} "
                        f"({definition.profile})")
        async with runtime.index.sessions.begin() as session:
            session.add(Collection(name=definition.name, source=definition.source,
                                   query=definition.query, profile=definition.profile,
                                   nifti=definition.nifti, secret=secrets.token_bytes(32)))
    elif (existing.source, existing.query, existing.profile, bool(existing.nifti)) != (
            definition.source, definition.query, definition.profile, definition.nifti):
        raise Conflict(f"the collection {definition.name} exists with another definition (source "
                       f"{existing.source}, query {existing.query!r}, profile {existing.profile}, "
                       f"nifti {bool(existing.nifti)}); a collection's definition never changes")
    try:
        version = await _next_version(runtime, definition.name, definition.review)
    except IntegrityError:
        # another request started the same version at the same moment: that one is the answer
        async with runtime.index.sessions() as session:
            version = (await session.execute(select(func.max(CollectionVersion.version)).where(
                CollectionVersion.collection == definition.name))).scalar_one()
    return await describe(runtime, definition.name, version=version)


async def _next_version(runtime: Runtime, name: str, review: bool = False) -> int:
    """The version being built, or a new one (its first step queued in the same transaction)."""
    insert = runtime.index._insert
    async with runtime.index.sessions.begin() as session:
        versions = (await session.execute(
            select(CollectionVersion).where(CollectionVersion.collection == name)
            .order_by(CollectionVersion.version.desc()).with_for_update()
        )).scalars().all()
        building = [v for v in versions if v.state not in ("complete", "failed")]
        if building:
            return building[0].version
        version = (versions[0].version + 1) if versions else 1
        session.add(CollectionVersion(collection=name, version=version, state="planning", detail="",
                                      instances=0, excluded=0, review=review))
        await session.execute(insert(OutboxItem).values(task=TASK, key=f"{name}/{version}/0")
                              .on_conflict_do_nothing())
    return version


async def describe(runtime: Runtime, name: str, *, version: int | None = None) -> dict[str, Any]:
    """The definition and every version (or one) with its progress."""
    async with runtime.index.sessions() as session:
        collection = await session.get(Collection, name)
        if collection is None:
            raise NotFound(f"no collection named {name}")
        versions = (await session.execute(
            select(CollectionVersion).where(CollectionVersion.collection == name)
            .order_by(CollectionVersion.version))).scalars().all()
        counts = (await session.execute(
            select(CollectionItem.version, CollectionItem.state, func.count())
            .where(CollectionItem.collection == name)
            .group_by(CollectionItem.version, CollectionItem.state))).all()
    by_version: dict[int, dict[str, int]] = defaultdict(
        lambda: {"pending": 0, "done": 0, "excluded": 0, "review": 0, "approved": 0})
    for number, state, n in counts:
        by_version[number][state] = n
    out_versions = []
    for v in versions:
        if version is not None and v.version != version:
            continue
        c = by_version[v.version]
        out_versions.append({
            "version": v.version, "state": v.state, "detail": v.detail,
            "pending": c["pending"] + c["approved"], "instances": c["done"], "excluded": c["excluded"],
            "review": c["review"], "heldForReview": bool(v.review),
            "started": v.started_at.isoformat() if v.started_at else None,
            "finished": v.finished_at.isoformat() if v.finished_at else None,
        })
    return {"name": collection.name, "source": collection.source, "query": collection.query,
            "profile": collection.profile, "nifti": bool(collection.nifti),
            "created": collection.created_at.isoformat() if collection.created_at else None,
            "versions": out_versions}


async def list_collections(runtime: Runtime) -> list[dict[str, Any]]:
    async with runtime.index.sessions() as session:
        names = (await session.execute(select(Collection.name).order_by(Collection.name))).scalars().all()
    return [await describe(runtime, n) for n in names]


async def lineage(runtime: Runtime, name: str) -> list[dict[str, Any]]:
    """Which original each item came from (admin only: the SHA-256 and UIDs of the originals)."""
    async with runtime.index.sessions() as session:
        if await session.get(Collection, name) is None:
            raise NotFound(f"no collection named {name}")
        items = (await session.execute(
            select(CollectionItem).where(CollectionItem.collection == name)
            .order_by(CollectionItem.version, CollectionItem.source_sop_instance_uid))).scalars().all()
    return [{"version": i.version, "state": i.state, "reason": i.reason,
             "sourceStudyInstanceUID": i.source_study_instance_uid,
             "sourceSeriesInstanceUID": i.source_series_instance_uid,
             "sourceSOPInstanceUID": i.source_sop_instance_uid,
             "originalSHA256": bytes(i.original_sha256).hex(),
             "SOPInstanceUID": i.sop_instance_uid, "sha256": bytes(i.sha256).hex() if i.sha256 else None,
             "pixels": json.loads(i.pixels_json) if i.pixels_json else None}
            for i in items]


# ---- the worker's steps ------------------------------------------------------------------------------
async def step(runtime: Runtime, key: str) -> str:
    """One step of a version's build (the ``collect`` outbox task); idempotent."""
    name, version_text, step_text = key.split("/")
    version, number = int(version_text), int(step_text)
    async with runtime.index.sessions() as session:
        collection = await session.get(Collection, name)
        row = await session.get(CollectionVersion, (name, version))
    if collection is None or row is None:
        return "gone"
    if row.state in ("complete", "failed", "review"):
        return row.state  # a version in review goes on when it is published (``publish``)
    try:
        if row.state == "planning":
            await _plan(runtime, collection, version)
            outcome = "planned"
        elif await _build(runtime, collection, version, row.review):
            outcome = "progress"
        elif held := await _count(runtime, name, version, "review"):
            await _set_version(runtime, name, version, state="review",
                               detail=f"{held} cleaned images wait for review (dicomgw share review {name})")
            return "review"
        else:
            await _finish(runtime, collection, version)
            return "complete"
    except Exception as exc:
        await _set_version(runtime, name, version, detail=f"retrying after {type(exc).__name__}: {exc}"[:500])
        raise
    async with runtime.index.sessions.begin() as session:
        await session.execute(runtime.index._insert(OutboxItem)
                              .values(task=TASK, key=f"{name}/{version}/{number + 1}")
                              .on_conflict_do_nothing())
    return outcome


async def _set_version(runtime: Runtime, name: str, version: int, **values: Any) -> None:
    async with runtime.index.sessions.begin() as session:
        await session.execute(update(CollectionVersion).where(
            CollectionVersion.collection == name, CollectionVersion.version == version).values(**values))


async def _plan(runtime: Runtime, collection: Collection, version: int) -> None:
    """Every instance of the query's studies not in an earlier version becomes a pending item."""
    studies: list[str] = []
    offset = 0
    while True:
        query = study_query(collection.query, collection.source, limit=1000, offset=offset)
        async with runtime.index.sessions() as session:
            page = await search(session, query,
                                case_insensitive=runtime.settings.index.case_insensitive_names)
        studies += [obj["0020000D"]["Value"][0] for obj in page]
        if len(page) < 1000:
            break
        offset += 1000
    insert = runtime.index._insert
    for start in range(0, len(studies), 200):
        batch = studies[start:start + 200]
        async with runtime.index.sessions.begin() as session:
            rows = (await session.execute(
                select(Instance.study_instance_uid, Instance.series_instance_uid,
                       Instance.sop_instance_uid, Instance.sha256)
                .where(Instance.partition_name == collection.source,
                       Instance.study_instance_uid.in_(batch)))).all()
            for study, series, sop, sha in rows:
                await session.execute(insert(CollectionItem).values(
                    collection=collection.name, source_sop_instance_uid=sop, version=version,
                    source_study_instance_uid=study, source_series_instance_uid=series,
                    original_sha256=bytes(sha), state="pending", reason="", row_json="",
                ).on_conflict_do_nothing())
    await _set_version(runtime, collection.name, version, state="building",
                       detail=f"{len(studies)} studies matched")


@dataclass
class _Prepared:
    item: CollectionItem
    part: SpooledPart | None = None
    row: manifest.ManifestRow | None = None
    excluded: str = ""
    pixels: str = ""  # what Clean Pixel Data did (JSON), when it looked
    frames: str | None = None  # the geometry of its frames (JSON, see _frames_json)
    held: bytes | None = None  # a cleaned file held for review, not stored yet


def review_key(name: str, version: int, sop_instance_uid: str) -> str:
    """Where a cleaned image waits for review (next to the version's files, never in the partition)."""
    return artifact_key(name, version, f"review/{sop_instance_uid}.dcm")


def _spool(blob: bytes, spool: Path, index: int) -> SpooledPart:
    path = Path(tempfile.mkstemp(dir=spool, suffix=".deid")[1])
    path.write_bytes(blob)
    return SpooledPart(index=index, path=path, size=len(blob), sha256=hashlib.sha256(blob).digest(),
                       headers={"content-type": "application/dicom"})


def _burned_in_reason(ds: pydicom.Dataset) -> str:
    said = str(ds.get("BurnedInAnnotation", "")).strip()
    kind = ("a secondary capture" if str(ds.get("SOPClassUID", "")).startswith(SECONDARY_CAPTURE_PREFIX)
            else f"modality {ds.get('Modality', '')}")
    return f"BurnedInAnnotation {said}" if said else f"{kind} without BurnedInAnnotation"


_RESIDUAL = re.compile(r"^frame (\d+): residual OCR")


def _cleaned(ds: pydicom.Dataset, out: pydicom.Dataset) -> tuple[pydicom.Dataset | None, str, str]:
    """Clean Pixel Data on the de-identified ``out`` (device rules by the original ``ds``'s maker):
    the cleaned dataset, or None and why it is left out; and the record of what was done (JSON).

    A reason is published (exclusions.csv): it says in which frames text was still read, never what.
    """
    from dicomgw.deid.pixels import Device, clean_pixels

    try:
        result = clean_pixels(out, device=Device.of(ds), check_all=True)
    except Exception as exc:  # an engine's failure leaves the image out; it never passes unchecked
        log.exception("clean pixel data failed")
        return None, f"burned-in text could not be checked (the cleaner failed: {type(exc).__name__})", ""
    record = json.dumps({"status": result.status,
                         "boxes": {str(f): [list(b) for b in boxes] for f, boxes in result.boxes.items()},
                         "wholeFrames": result.whole_frames, "passes": result.passes,
                         "rules": result.rules_version}, separators=(",", ":"))
    if result.status == "clean" and result.dataset is not None:
        return result.dataset, "", record
    frames = sorted({int(m.group(1)) for r in result.reasons if (m := _RESIDUAL.match(r))})
    if frames:
        why = ("burned-in text remains after cleaning (residual OCR still reads text in frame "
               + ", ".join(map(str, frames[:20])) + (", ..." if len(frames) > 20 else "") + ")")
    else:
        why = f"burned-in text could not be checked ({'; '.join(result.reasons)[:180]})"
    return None, why, record


def _deidentify_file(data: bytes, secret: bytes, options: Options, spool: Path,
                     index: int, hold: bool) -> _Prepared:
    """The de-identified file of one original (spooled, or held for review when it was cleaned), its
    manifest row, or why it is left out. ``_Prepared.item`` is filled in by the caller."""
    from dicomgw.deid.pixels import candidate

    entry = _Prepared(item=None)  # type: ignore[arg-type]
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:
        entry.excluded = f"the original could not be read: {type(exc).__name__}"
        return entry
    # the cleaner's candidates: the profile's burned-in candidates, and more modalities that show text
    cleaning = options.clean_pixels and "PixelData" in ds and candidate(ds)
    if burned_in_candidate(ds) and not cleaning:
        entry.excluded = f"burned-in text possible ({_burned_in_reason(ds)})"
        return entry
    out = deidentify(ds, secret, options)
    if cleaning:
        cleaned, entry.excluded, entry.pixels = _cleaned(ds, out)
        if cleaned is None:
            return entry
        out = cleaned
    buffer = io.BytesIO()
    out.save_as(buffer, enforce_file_format=True)
    blob = buffer.getvalue()
    relative = f"{out.StudyInstanceUID}/{out.SeriesInstanceUID}/{out.SOPInstanceUID}.dcm"
    entry.row = manifest.row_for(out, blob, relative)
    entry.frames = _frames_json(out)
    if cleaning and hold:
        entry.held = blob
    else:
        entry.part = _spool(blob, spool, index)
    return entry


async def _count(runtime: Runtime, name: str, version: int, state: str) -> int:
    async with runtime.index.sessions() as session:
        return int((await session.execute(select(func.count()).select_from(CollectionItem).where(
            CollectionItem.collection == name, CollectionItem.version == version,
            CollectionItem.state == state))).scalar_one())


async def _build(runtime: Runtime, collection: Collection, version: int, review: bool = False) -> bool:
    """De-identify and store a batch of pending items, and store the approved ones held for review;
    False when none was left."""
    _, options = parse_profile(collection.profile)
    async with runtime.index.sessions() as session:
        items = (await session.execute(
            select(CollectionItem).where(CollectionItem.collection == collection.name,
                                         CollectionItem.version == version,
                                         CollectionItem.state.in_(("pending", "approved")))
            .order_by(CollectionItem.source_sop_instance_uid).limit(STEP_INSTANCES))).scalars().all()
        if not items:
            return False
        sources = {r.sop_instance_uid: r for r in (await session.execute(
            select(Instance.sop_instance_uid, Instance.object_key, Instance.sha256, Instance.stored_form)
            .where(Instance.partition_name == collection.source,
                   Instance.sop_instance_uid.in_([i.source_sop_instance_uid for i in items])))).all()}
    deadline = time.monotonic() + STEP_SECONDS
    spool = runtime.settings.spool_path
    secret = bytes(collection.secret)
    # originals are read and de-identified a few at a time (reads overlap; pydicom holds the GIL)
    limit = asyncio.Semaphore(max(2, min(8, runtime.settings.storage.max_concurrency)))

    async def approved(index: int, item: CollectionItem) -> _Prepared:
        """A cleaned image a data manager approved: stored as it was reviewed, byte for byte."""
        assert item.sop_instance_uid is not None and item.sha256 is not None
        blob = await runtime.store.read(review_key(collection.name, version, item.sop_instance_uid))
        if hashlib.sha256(blob).digest() != bytes(item.sha256):
            raise RuntimeError(f"a reviewed image does not match its SHA-256 ({item.sop_instance_uid})")
        return _Prepared(item, part=await asyncio.to_thread(_spool, blob, spool, index),
                         row=manifest.ManifestRow(**json.loads(item.row_json)), pixels=item.pixels_json,
                         frames=item.frames_json)

    async def prepare(index: int, item: CollectionItem) -> _Prepared | None:
        async with limit:
            if index and time.monotonic() > deadline:
                return None  # left pending for the next step
            if item.state == "approved":
                return await approved(index, item)
            source = sources.get(item.source_sop_instance_uid)
            if source is None:
                return _Prepared(item, excluded="the original is no longer indexed")
            data = await originals.read(runtime.store, Copy(source.object_key, source.stored_form))
            if hashlib.sha256(data).digest() != bytes(item.original_sha256):
                # never publish from a damaged copy: verification repairs it, and the step runs again
                raise RuntimeError(f"an original does not match its SHA-256 ({source.object_key})")
            entry = await asyncio.to_thread(_deidentify_file, data, secret, options, spool, index, review)
            entry.item = item
            if entry.held is not None and entry.row is not None:
                await runtime.store.put_bytes(
                    review_key(collection.name, version, entry.row.sop_instance_uid), entry.held)
            return entry

    outcomes = await asyncio.gather(*(prepare(i, item) for i, item in enumerate(items)),
                                    return_exceptions=True)
    prepared = [o for o in outcomes if isinstance(o, _Prepared)]
    failure = next((o for o in outcomes if isinstance(o, BaseException)), None)
    if failure is not None:
        for entry in prepared:
            if entry.part is not None:
                entry.part.discard()
        raise failure

    async def parts() -> AsyncIterator[SpooledPart]:
        for entry in prepared:
            if entry.part is not None:
                yield entry.part

    outcome = await store_parts(runtime, parts(), None, collection.name)
    results = {r.index: r for r in outcome.results}
    async with runtime.index.sessions.begin() as session:
        for entry in prepared:
            values: dict[str, Any]
            result = results.get(entry.part.index) if entry.part is not None else None
            if entry.held is not None and entry.row is not None:
                values = {"state": "review", "reason": ""}
            elif entry.part is None or result is None:
                values = {"state": "excluded", "reason": entry.excluded[:256]}
            elif result.error is not None:
                values = {"state": "excluded",
                          "reason": f"the de-identified object was refused: {result.error.detail}"[:256]}
            else:
                values = {"state": "done", "reason": ""}
            if entry.row is not None and values["state"] != "excluded":
                values.update(study_instance_uid=entry.row.study_instance_uid,
                              series_instance_uid=entry.row.series_instance_uid,
                              sop_instance_uid=entry.row.sop_instance_uid,
                              sha256=bytes.fromhex(entry.row.sha256),
                              row_json=json.dumps(asdict(entry.row), separators=(",", ":")),
                              frames_json=entry.frames)
            values["pixels_json"] = entry.pixels
            await session.execute(update(CollectionItem).where(
                CollectionItem.collection == collection.name,
                CollectionItem.source_sop_instance_uid == entry.item.source_sop_instance_uid,
                CollectionItem.state == entry.item.state).values(**values))
    done = sum(1 for e in prepared if e.part is not None)
    held = sum(1 for e in prepared if e.held is not None)
    log.info("collection step", extra={"collection": collection.name, "version": version, "instances": done,
                                       "held": held, "excluded": len(prepared) - done - held})
    return True


async def cleaned(runtime: Runtime, name: str, version: int) -> list[dict[str, Any]]:
    """The images of a version the cleaner looked at and passed (the review list), with their boxes."""
    async with runtime.index.sessions() as session:
        if await session.get(CollectionVersion, (name, version)) is None:
            raise NotFound(f"the collection {name} has no version {version}")
        items = (await session.execute(
            select(CollectionItem).where(CollectionItem.collection == name, CollectionItem.version == version,
                                         CollectionItem.pixels_json != "",
                                         CollectionItem.state.in_(("review", "approved", "done")))
            .order_by(CollectionItem.sop_instance_uid))).scalars().all()
    out = []
    for i in items:
        pixels, row = json.loads(i.pixels_json), json.loads(i.row_json)
        out.append({"SOPInstanceUID": i.sop_instance_uid, "StudyInstanceUID": i.study_instance_uid,
                    "SeriesInstanceUID": i.series_instance_uid, "state": i.state,
                    "modality": row.get("modality", ""), "rows": row.get("rows"),
                    "columns": row.get("columns"), "frames": row.get("frames"), "boxes": pixels["boxes"],
                    "wholeFrames": pixels["wholeFrames"], "passes": pixels["passes"],
                    "rules": pixels["rules"]})
    return out


async def cleaned_file(runtime: Runtime, name: str, version: int, sop_instance_uid: str) -> bytes:
    """A cleaned image as it is (or will be) published: held for review, or from the partition."""
    async with runtime.index.sessions() as session:
        item = (await session.execute(select(CollectionItem).where(
            CollectionItem.collection == name, CollectionItem.version == version,
            CollectionItem.sop_instance_uid == sop_instance_uid,
            CollectionItem.pixels_json != ""))).scalars().first()
    if item is None or item.state not in ("review", "approved", "done"):
        raise NotFound(f"version {version} of {name} has no cleaned image {sop_instance_uid}")
    if item.state != "done":
        return await runtime.store.read(review_key(name, version, sop_instance_uid))
    assert item.study_instance_uid is not None and item.series_instance_uid is not None
    records = await runtime.index.instances(item.study_instance_uid, item.series_instance_uid, partition=name)
    [record] = [r for r in records if r.sop_instance_uid == sop_instance_uid]
    return await originals.read(runtime.store, record.copy)


async def publish(runtime: Runtime, name: str, version: int, reject: list[str]) -> dict[str, Any]:
    """A data manager's decision on a version in review: the rejected images are left out ("rejected in
    review"), every other one held is stored, and the version is finished."""
    async with runtime.index.sessions.begin() as session:
        row = await session.get(CollectionVersion, (name, version), with_for_update=True)
        if row is None:
            raise NotFound(f"the collection {name} has no version {version}")
        if row.state != "review":
            raise Conflict(f"version {version} of {name} is {row.state}, not in review")
        held = set((await session.execute(select(CollectionItem.sop_instance_uid).where(
            CollectionItem.collection == name, CollectionItem.version == version,
            CollectionItem.state == "review"))).scalars().all())
        unknown = sorted(set(reject) - held)
        if unknown:
            raise BadRequest(f"not held for review in version {version} of {name}: {', '.join(unknown[:5])}")
        base = (CollectionItem.collection == name, CollectionItem.version == version,
                CollectionItem.state == "review")
        if reject:
            await session.execute(update(CollectionItem).where(
                *base, CollectionItem.sop_instance_uid.in_(reject)).values(
                state="excluded", reason="rejected in review"))
        await session.execute(update(CollectionItem).where(*base).values(state="approved"))
        row.state, row.detail = "building", f"published after review ({len(reject)} rejected)"
        await session.execute(runtime.index._insert(OutboxItem).values(
            task=TASK, key=f"{name}/{version}/{int(time.time() * 1000)}").on_conflict_do_nothing())
    return await describe(runtime, name, version=version)


async def _finish(runtime: Runtime, collection: Collection, version: int) -> None:
    """Manifest, report and volumes of the version (every item up to it); then it is complete."""
    async with runtime.index.sessions() as session:
        items = (await session.execute(
            select(CollectionItem).where(CollectionItem.collection == collection.name,
                                         CollectionItem.version <= version))).scalars().all()
    rows = await asyncio.to_thread(_rows_with_geometry, [i for i in items if i.state == "done"])
    excluded = [i for i in items if i.state == "excluded"]
    secret = bytes(collection.secret)
    files: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(dir=runtime.settings.spool_path) as tmp:
        csv_path, parquet_path = await asyncio.to_thread(manifest.write, rows, Path(tmp) / "manifest")
        files["manifest.csv"] = csv_path.read_bytes()
        files["manifest.parquet"] = parquet_path.read_bytes()
        if collection.nifti:
            volumes = await _volumes(runtime, collection.name, rows, Path(tmp))
            files.update(volumes)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["sop_instance_uid", "version", "reason"])
    for i in sorted(excluded, key=lambda i: (i.version, i.source_sop_instance_uid)):
        # the pseudonym the instance would have had: nothing of the original is published
        writer.writerow([pseudonymous_uid(secret, i.source_sop_instance_uid), i.version, i.reason])
    files["exclusions.csv"] = out.getvalue().encode()
    reasons = Counter(i.reason.split(" (")[0] for i in excluded)
    report = {"collection": collection.name, "version": version, "source": collection.source,
              "query": collection.query, "profile": collection.profile,
              "instances": len(rows), "excluded": len(excluded), "excludedBy": dict(reasons),
              "studies": len({r.study_instance_uid for r in rows}),
              "series": len({r.series_instance_uid for r in rows})}
    if parse_profile(collection.profile)[1].clean_pixels:
        report["cleanPixelData"], files["redactions.csv"] = _redactions(items)
    report.update(files=sorted(files), completed=datetime.now(UTC).isoformat())
    files["report.json"] = json.dumps(report, indent=2).encode()
    # the replica gets them too: what a research team was handed should survive the primary's loss
    # like the instances it lists (they are replicated as any instance is)
    stores = [runtime.store, *([runtime.replica] if runtime.replica is not None else [])]
    for filename, data in files.items():
        for store in stores:
            await store.put_bytes(artifact_key(collection.name, version, filename), data)
    new = [i for i in items if i.version == version]
    for i in new:  # what was held for review is in the partition now, or left out
        if i.pixels_json and i.sop_instance_uid:
            await runtime.store.delete(review_key(collection.name, version, i.sop_instance_uid))
    await _set_version(runtime, collection.name, version, state="complete", finished_at=datetime.now(UTC),
                       instances=sum(i.state == "done" for i in new),
                       excluded=sum(i.state == "excluded" for i in new), detail="")


def _frames_json(ds: pydicom.Dataset) -> str | None:
    """The geometry of the frames of a de-identified instance, kept with its item until the version is
    finished (a series' flag needs all its frames, and the manifest rows hold only the first frame's):
    per frame, the values of ``volume.Frame``'s fields in their order. None when it cannot be read:
    the series' flag is then unknown, and the instance is published all the same."""
    try:
        frames = volume.frames_of(ds)
    except Exception:
        log.exception("the geometry of a de-identified instance could not be read")
        return None
    return json.dumps([astuple(f) for f in frames], separators=(",", ":"))


_FRAME_FIELDS = [f.name for f in fields(volume.Frame)]


def _frames(text: str | None) -> list[volume.Frame] | None:
    """The frames ``_frames_json`` stored; None when none were (an item built before they were), or they
    no longer fit ``volume.Frame``."""
    if not text:
        return None
    try:
        return [volume.Frame(**{name: tuple(value) if isinstance(value, list) else value
                                for name, value in zip(_FRAME_FIELDS, values, strict=True)})
                for values in json.loads(text)]
    except (TypeError, ValueError):
        return None


def _geometry(frames: list[volume.Frame]) -> tuple[str, str]:
    """A series' flag and its detail, from the client's plan of all its frames (CollectionDataset
    yields one item per stack and skips what is irregular: the flag says what it will do)."""
    stacks, irregular = volume.plan(frames)
    if not irregular:
        return ("volume", "") if len(stacks) == 1 else ("stacks", f"{len(stacks)} regular stacks")
    # frames that cannot be placed are planned apart, as one group: when that group is all there is,
    # nothing of the series is a volume (one frame that can be placed alone makes a stack of one)
    if not stacks and len(irregular) == 1 and not volume.plan(irregular[0].frames[:1])[0]:
        return "2d", ""
    concerned = Counter[str]()
    for group in irregular:
        concerned[group.reason] += len(group.frames)
    return "irregular", "; ".join(f"{n} frames: {reason}" for reason, n in sorted(concerned.items()))


def _rows_with_geometry(items: Sequence[CollectionItem]) -> list[manifest.ManifestRow]:
    """The manifest rows of done items, each with its series' geometry flag; "" for a series of which
    an item has no frames stored. Frames are planned in the manifest's order, as the dataset plans
    them, so that what is built again comes out the same."""
    rows = sorted(((manifest.ManifestRow(**json.loads(i.row_json)), i) for i in items),
                  key=lambda pair: pair[0].path)
    frames: dict[str, list[volume.Frame]] = defaultdict(list)
    unknown: set[str] = set()
    for row, item in rows:
        stored = _frames(item.frames_json)
        if stored is None:
            unknown.add(row.series_instance_uid)
        else:
            frames[row.series_instance_uid].extend(stored)
    flags = {uid: _geometry(f) for uid, f in frames.items() if uid not in unknown}
    out = []
    for row, _ in rows:
        geometry, detail = flags.get(row.series_instance_uid, ("", ""))
        out.append(replace(row, geometry=geometry, geometry_detail=detail))
    return out


def _redactions(items: Sequence[CollectionItem]) -> tuple[dict[str, Any], bytes]:
    """The report's Clean Pixel Data counts, and ``redactions.csv``: every box filled in a published
    image (so that a model can be told which pixels are not the patient's), by its published UID."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["sop_instance_uid", "version", "frame", "row0", "col0", "row1", "col1", "whole_frame"])
    counts = Counter[str]()
    rules: set[str] = set()
    for i in sorted(items, key=lambda i: (i.version, i.sop_instance_uid or "")):
        if not i.pixels_json:
            continue
        pixels = json.loads(i.pixels_json)
        rules.add(pixels["rules"])
        counts["checked"] += 1
        if i.state != "done":
            counts["rejectedInReview" if i.reason == "rejected in review" else "excluded"] += 1
            continue
        whole = set(pixels["wholeFrames"])
        if pixels["boxes"] or whole:
            counts["cleaned"] += 1
        else:
            counts["noTextFound"] += 1
        for frame in sorted(whole):
            writer.writerow([i.sop_instance_uid, i.version, frame, "", "", "", "", "yes"])
        for frame, boxes in sorted(pixels["boxes"].items(), key=lambda fb: int(fb[0])):
            if int(frame) in whole:
                continue
            for box in boxes:
                counts["boxes"] += 1
                writer.writerow([i.sop_instance_uid, i.version, frame, *box, ""])
    keys = ("checked", "cleaned", "noTextFound", "boxes", "excluded", "rejectedInReview")
    summary: dict[str, Any] = {key: counts[key] for key in keys}
    summary["rules"] = sorted(rules)
    return summary, out.getvalue().encode()


async def _volumes(runtime: Runtime, name: str, rows: list[manifest.ManifestRow],
                   tmp: Path) -> dict[str, bytes]:
    """A NIfTI volume and JSON sidecar per series (dcm2niix), and ``volumes.csv`` listing them."""
    from dicomgw.collections.nifti import ConversionFailed, series_to_nifti

    by_series: dict[str, list[manifest.ManifestRow]] = defaultdict(list)
    for r in rows:
        by_series[r.series_instance_uid].append(r)
    files: dict[str, bytes] = {}
    listing = io.StringIO()
    writer = csv.writer(listing)
    # the SHA-256 of each file, so that a pull verifies a volume as it verifies an instance
    writer.writerow(["series_instance_uid", "path", "sidecar", "shape", "spacing", "error", "sha256",
                     "sidecar_sha256"])
    for series, members in sorted(by_series.items()):
        folder = tmp / "series" / series
        folder.mkdir(parents=True, exist_ok=True)
        records = await runtime.index.instances(members[0].study_instance_uid, series, partition=name)
        for record in records:
            (folder / f"{record.sop_instance_uid}.dcm").write_bytes(
                await originals.read(runtime.store, record.copy))
        try:
            volume = await asyncio.to_thread(series_to_nifti, folder, tmp / "nifti", series)
        except ConversionFailed as exc:
            writer.writerow([series, "", "", "", "", str(exc)[:200], "", ""])
            continue
        path, sidecar = f"nifti/{series}.nii.gz", f"nifti/{series}.json"
        files[path] = volume.path.read_bytes()
        files[sidecar] = volume.sidecar.read_bytes() if volume.sidecar.exists() else b"{}"
        writer.writerow([series, path, sidecar, "x".join(map(str, volume.shape)),
                         "x".join(map(str, volume.spacing)), "", hashlib.sha256(files[path]).hexdigest(),
                         hashlib.sha256(files[sidecar]).hexdigest()])
    files["volumes.csv"] = listing.getvalue().encode()
    return files


async def published_versions(runtime: Runtime, name: str) -> list[dict[str, Any]]:
    """The versions a reader of the collection's partition sees (complete ones, with their files)."""
    described = await describe(runtime, name)
    out = []
    for v in described["versions"]:
        if v["state"] != "complete":
            continue
        report = json.loads(await runtime.store.read(artifact_key(name, v["version"], "report.json")))
        out.append({"version": v["version"], "finished": v["finished"], "instances": report["instances"],
                    "excluded": report["excluded"], "files": report["files"] + ["report.json"]})
    return out


async def direct_objects(runtime: Runtime, name: str, version: int, *, offset: int = 0,
                         limit: int = 1000) -> tuple[list[dict[str, Any]], int]:
    """A page of the instances of a complete version (every one up to it, in the manifest's order of
    SOP Instance UID) with a presigned GET URL of each stored object, where the store can sign one and
    the object is the instance's bytes as they are (verbatim, in the hot store); ``url`` is None for the
    others (compact, or cold: read them with WADO-RS). And the number of instances in the version."""
    from dicomgw.storage.tiered import TieredStore

    store = runtime.store.hot if isinstance(runtime.store, TieredStore) else runtime.store
    presign = getattr(store, "presign", None)
    if presign is None or not getattr(store, "can_presign", False):
        raise NotFound("this archive hands out no direct URLs (no public endpoint of its object store is "
                       "configured): read the instances with WADO-RS")
    done = (CollectionItem.collection == name, CollectionItem.version <= version,
            CollectionItem.state == "done")
    async with runtime.index.sessions() as session:
        total = int((await session.execute(select(func.count()).select_from(CollectionItem).where(*done)
                                           )).scalar_one())
        rows = (await session.execute(
            select(CollectionItem.sop_instance_uid, CollectionItem.study_instance_uid, CollectionItem.sha256,
                   Instance.object_key, Instance.stored_form, Instance.tier)
            .join(Instance, (Instance.partition_name == name)
                  & (Instance.sop_instance_uid == CollectionItem.sop_instance_uid))
            .where(*done).order_by(CollectionItem.sop_instance_uid).offset(offset).limit(limit))).all()
    out = []
    for sop, study, sha, key, form, tier in rows:
        direct = form == "verbatim" and tier == "hot"
        out.append({"sop_instance_uid": sop, "study_instance_uid": study,
                    "sha256": bytes(sha).hex() if sha else None,
                    "url": await presign(key) if direct else None})
    return out, total

