"""A research collection as a map-style dataset: what a training loop, a PyTorch DataLoader or MONAI's
dictionary transforms index, without this package importing torch.

``CollectionDataset(url, collection)`` reads the manifest of the collection's latest complete version
(or ``version``), keeps the rows ``where`` selects, and makes its items:

- ``level="series"``: one item per regular stack of a series. The stacks are planned from the series'
  WADO-RS metadata (one request per study, the plan then cached): frames are grouped by frame of
  reference, orientation, size, pixel spacing, enhanced StackID, echo and temporal position, and sorted
  along the slice normal (never by file name or InstanceNumber). A series of several stacks (localizers
  in three planes, radial slices) gives one item per stack. A group that is not a regular volume
  (a gap, unequal spacing, several frames at one position, frames without a position) is skipped and
  listed in ``skipped`` with the reason: never resampled, never a silently wrong volume. The manifest's
  ``geometry`` column is the archive's run of the same planner (``volume``) over the series, so
  ``where={"geometry": "volume"}`` selects before anything is fetched.
- ``level="instance"``: one item per frame (a single-frame instance is one item, a multi-frame one as
  many as it has frames), a 2D image in display layout ``image[row, column]``.

Each item is a dict: ``image`` (float32, real-world values: the rescale applied, per frame for enhanced
objects), ``affine`` (4x4 float64, RAS millimetres of the image's array indices; for series the
layout dcm2niix writes and nibabel reads: ``image[column, last row first, slice]``, kept in memory
slice by slice as NIfTI keeps it (Fortran order for a grey volume: no transposed copy is made); NaN
where an instance has no geometry) and ``meta`` (the manifest row; for a stack, the series' columns as
values and the instance columns as lists in slice order, with ``frame``, ``stack`` and ``stacks``).

Objects come through a verified cache (``cache.Cache``): fetched once as stored, checked against the
manifest's SHA-256, decoded here (an uncompressed little-endian object read by ``rawread``, its frames
straight from its bytes; anything else by pydicom with the pylibjpeg codecs). Where the archive hands
out presigned URLs of its store, objects are read from there, concurrently; else with WADO-RS (one
request for a series when at least ``api.SERIES_REQUEST_MIN`` of its objects, and half of them, are
missing; else one request per instance, concurrently). An item is made from its objects as they
arrive; iterating, a background thread fetches item after item, at most one ahead of the one being
made. A second epoch, and a later run of a
pinned ``version``, send no request at all; with ``version=None`` and the archive out of reach, the
latest version cached is used.

Worker processes (fork or spawn) each open their own HTTP client and thread pool on first use: the
pickled dataset holds no connection.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import queue
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow.parquet as pq
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from dicomgw_client import volume
from dicomgw_client.api import SERIES_REQUEST_MIN, Archive, DirectURLs
from dicomgw_client.cache import Cache, Staged, sha256_hex
from dicomgw_client.errors import ArchiveError, ArchiveUnreachable, GeometryError, IntegrityError

log = logging.getLogger("dicomgw_client")

Item = dict[str, Any]
Level = Literal["series", "instance"]
PLAN_FORMAT = "dicomgw-client stacks 1"
# the parts of a series' answer are handed on to be hashed and cached this many bytes at a time
KEEP_BYTES = 8 << 20
# manifest columns that are the series' (values in a stack's meta); every other one is per instance
SERIES_COLUMNS = ("patient_id", "study_instance_uid", "series_instance_uid", "modality",
                  "body_part_examined", "series_description", "geometry", "geometry_detail")
# what planning reads of the metadata: the rest of each instance's DICOM JSON is left unparsed
_PLAN_KEYWORDS = ("SOPInstanceUID", "Rows", "Columns", "SamplesPerPixel", "NumberOfFrames",
                  "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                  "SpacingBetweenSlices", "FrameOfReferenceUID", "EchoNumbers", "TemporalPositionIndex",
                  "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")
_PLAN_TAGS = frozenset(f"{tag_for_keyword(k):08X}" for k in _PLAN_KEYWORDS)
_TAG_OF = {k: f"{tag_for_keyword(k):08X}" for k in _PLAN_KEYWORDS}
_FUNCTIONAL_GROUPS = frozenset(_TAG_OF[k] for k in ("SharedFunctionalGroupsSequence",
                                                    "PerFrameFunctionalGroupsSequence"))


class _JsonAttributes:
    """The planning attributes of an instance without functional groups (most of them), read straight
    from its DICOM JSON as ``volume.frames_of`` reads a dataset: a value, or a list when there are
    several. pydicom's ``Dataset.from_json`` of the same cost more than the rest of planning."""

    __slots__ = ("_entry",)

    def __init__(self, entry: dict[str, Any]) -> None:
        self._entry = entry

    def get(self, key: str, default: Any = None) -> Any:
        element = self._entry.get(_TAG_OF.get(key, ""))
        values = element.get("Value") if element else None
        if not values:
            return default
        return values[0] if len(values) == 1 else values


def default_cache_dir() -> Path:
    """``$DICOMGW_CACHE_DIR``, else ``$XDG_CACHE_HOME/dicomgw``, else ``~/.cache/dicomgw``."""
    if os.environ.get("DICOMGW_CACHE_DIR"):
        return Path(os.environ["DICOMGW_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dicomgw"


def select(rows: list[dict[str, Any]], where: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The rows ``where`` keeps: column -> a value (equal), a set, list or tuple (one of them), or a
    callable (true for the value)."""
    if not where:
        return rows
    known = set(rows[0]) if rows else set()
    unknown = set(where) - known
    if rows and unknown:
        raise ValueError(f"no manifest column {', '.join(sorted(unknown))}; "
                         f"columns: {', '.join(sorted(known))}")

    def keeps(row: dict[str, Any]) -> bool:
        for column, wanted in where.items():
            value = row[column]
            if callable(wanted):
                if not wanted(value):
                    return False
            elif isinstance(wanted, set | frozenset | list | tuple):
                if value not in wanted:
                    return False
            elif value != wanted:
                return False
        return True

    return [r for r in rows if keeps(r)]


@dataclass(frozen=True)
class SeriesItem:
    series_instance_uid: str
    stack: int  # 0-based, among the series' regular stacks
    stacks: int
    slices: tuple[tuple[str, int], ...]  # (SOP Instance UID, 0-based frame) in slice order
    affine: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class FrameItem:
    row: int  # index into the selected manifest rows
    frame: int  # 0-based


@dataclass(frozen=True)
class Skipped:
    """Frames of a series left out at level "series", and why."""

    series_instance_uid: str
    reason: str
    frames: int


class CollectionDataset:
    """A collection version's volumes or 2D frames, by index (see the module's docstring)."""

    def __init__(self, url: str, collection: str, version: int | None = None, level: Level = "series",
                 cache_dir: str | os.PathLike[str] | None = None, token: str | None = None,
                 where: Mapping[str, Any] | None = None, transform: Callable[[Item], Any] | None = None,
                 *, cache_max_bytes: int | None = None, concurrency: int = 8, timeout: float = 120.0,
                 retries: int = 4) -> None:
        if level not in ("series", "instance"):
            raise ValueError(f'level is "series" or "instance", not {level!r}')
        self.collection, self.level, self.transform = collection, level, transform
        token = token if token is not None else os.environ.get("DICOMGW_TOKEN")
        self.archive = Archive(url, token, timeout=timeout, retries=retries, connections=concurrency)
        self.cache = Cache(Path(cache_dir) if cache_dir is not None else default_cache_dir(), cache_max_bytes)
        self.concurrency = concurrency
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        try:
            self.version, manifest = self._manifest(version)
            # presigned URLs of the objects in the archive's store, asked for on first use (or while the
            # stacks are planned: _series_items); pickled with the dataset
            self._direct = DirectURLs(self.archive, collection, self.version)
            self.rows = select(manifest, where)
            self._by_sop = {r["sop_instance_uid"]: r for r in self.rows}
            self._shas = frozenset(r["sha256"] for r in self.rows)
            # instances of each series in the version, selected or not: is one request for the series
            # worth it (see _fetch_missing)
            self._series_sizes = Counter(r["series_instance_uid"] for r in manifest)
            self.skipped: list[Skipped] = []
            self._items: list[SeriesItem] | list[FrameItem] = (
                self._series_items() if level == "series" else self._frame_items())
        finally:
            # nothing open in what is pickled or forked: each process opens its own on first use
            self.archive.close()
            self._close_pool()
        if self.skipped:
            log.warning("%s v%d: %d groups of frames are not regular volumes and are skipped (see .skipped)",
                        collection, self.version, len(self.skipped))

    # ---- the map-style protocol --------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> Any:
        if not -len(self._items) <= index < len(self._items):
            raise IndexError(f"index {index} out of range for {len(self._items)} items")
        item = self._items[index]
        return self._make(item, self._arrivals(*self._in_cache(self._item_rows(item))))

    def _make(self, item: SeriesItem | FrameItem, arrivals: Iterable[tuple[str, bytes]]) -> Any:
        """The item's dict (transformed), made from its objects (SHA-256, bytes) as they come."""
        out = self._series(item, arrivals) if isinstance(item, SeriesItem) else self._frame(item, arrivals)
        return self.transform(out) if self.transform is not None else out

    def _item_rows(self, item: SeriesItem | FrameItem) -> list[dict[str, Any]]:
        if isinstance(item, FrameItem):
            return [self.rows[item.row]]
        return [self._by_sop[sop] for sop in dict.fromkeys(sop for sop, _ in item.slices)]

    def __iter__(self) -> Iterator[Any]:
        """Every item in order. Objects are fetched (or read from the cache) by a background thread, item
        after item without a pause, at most one item ahead of the one being made; an item is made from
        its objects as they arrive, so its last objects are still coming while the first are decoded. An
        object two items share is fetched once."""
        items: Sequence[SeriesItem | FrameItem] = self._items
        if not items:
            return
        ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dicomgw-ahead")
        fetched: set[str] = set()  # what this iteration has put in the cache
        try:
            upcoming = self._prefetch(ahead, items[0], fetched)
            for index, item in enumerate(items):
                current = upcoming
                if index + 1 < len(items):
                    upcoming = self._prefetch(ahead, items[index + 1], fetched)
                yield self._make(item, current)
        finally:
            ahead.shutdown(wait=True, cancel_futures=True)

    def _prefetch(self, ahead: ThreadPoolExecutor, item: SeriesItem | FrameItem,
                  fetched: set[str]) -> Iterator[tuple[str, bytes]]:
        """The item's objects as ``ahead`` brings them, after the items submitted before (a queue read
        by the returned iterator). What the cache holds is looked up here, in the calling thread: in the
        background, each of the item's look-ups waited for the GIL while the current item is made."""
        there, missing = self._in_cache(self._item_rows(item))
        arrived: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()

        def pump() -> None:
            try:
                # fetched for an item before (they share objects): in the cache now
                shared = [row for row in missing if row["sha256"] in fetched]
                left = [row for row in missing if row["sha256"] not in fetched]
                for sha256, data in self._arrivals([*there, *shared], left):
                    fetched.add(sha256)
                    arrived.put((_ARRIVED, (sha256, data)))
            except BaseException as exc:  # handed to the consumer
                arrived.put((_FAILED, exc))
            else:
                arrived.put((_DONE, None))

        ahead.submit(pump)
        return _drained(arrived)

    def __repr__(self) -> str:
        return (f"CollectionDataset({self.archive.root!r}, {self.collection!r}, version={self.version}, "
                f"level={self.level!r}: {len(self)} items, {len(self.skipped)} skipped)")

    @property
    def requests(self) -> int:
        """Requests this process has sent to the archive for this dataset since it was made or unpickled."""
        return self.archive.requests

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_pool=None, _pool_pid=0)
        return state

    # ---- manifest ----------------------------------------------------------------------------------
    def _manifest_path(self, version: int) -> str:
        archive_key = hashlib.sha256(self.archive.root.encode()).hexdigest()[:16]
        return f"manifests/{archive_key}/{self.collection}/{version}.parquet"

    def _cached_versions(self) -> list[int]:
        folder = self.cache.root / Path(self._manifest_path(0)).parent
        return sorted(int(p.stem) for p in folder.glob("*.parquet") if p.stem.isdigit())

    def _manifest(self, version: int | None) -> tuple[int, list[dict[str, Any]]]:
        """The version's number and manifest rows: from the cache when there (a version never changes)."""
        if version is None:
            try:
                versions = self.archive.versions(self.collection)
            except ArchiveUnreachable:
                cached = self._cached_versions()
                if not cached:
                    raise
                log.warning("%s is out of reach: version %d of %s, the latest cached, is used",
                            self.archive.origin, cached[-1], self.collection)
                versions = [{"version": cached[-1]}]
            if not versions:
                raise ArchiveError(f"the collection {self.collection} has no complete version yet")
            version = int(versions[-1]["version"])
        version = int(version)
        relative = self._manifest_path(version)
        data = self.cache.read_file(relative)
        if data is None:
            data = self.archive.version_file(self.collection, version, "manifest.parquet")
            self.cache.write_file(relative, data)
        rows: list[dict[str, Any]] = pq.read_table(io.BytesIO(data)).to_pylist()
        return version, rows

    # ---- items -------------------------------------------------------------------------------------
    def _frame_items(self) -> list[FrameItem]:
        return [FrameItem(i, f) for i, row in enumerate(self.rows) for f in range(max(1, int(row["frames"])))]

    def _series_items(self) -> list[SeriesItem]:
        by_series: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in self.rows:
            by_series[row["series_instance_uid"]].append(row)
        plans: dict[str, dict[str, Any]] = {}
        missing: dict[str, list[str]] = defaultdict(list)  # study -> series without a cached plan
        for series, rows in by_series.items():
            data = self.cache.read_file(self._plan_path(rows))
            if data is not None:
                plans[series] = json.loads(data)
            else:
                missing[rows[0]["study_instance_uid"]].append(series)
        if missing:
            # a first run: the store's URLs are asked for while the metadata comes, when objects are to
            # be fetched (a later run, its stacks cached, sends no request until an object is missing)
            early = (self._thread_pool().submit(self._direct.refresh)
                     if any(row["sha256"] not in self.cache for row in self.rows) else None)
            studies = sorted(missing)
            for study, metadata in zip(studies, self._pool_map(self._study_metadata, studies), strict=True):
                for series in missing[study]:
                    plans[series] = self._plan(by_series[series], metadata)
                    self.cache.write_file(self._plan_path(by_series[series]),
                                          json.dumps(plans[series]).encode())
            if early is not None:
                early.result()
        items = []
        for series in by_series:
            plan = plans[series]
            for n, stack in enumerate(plan["stacks"]):
                items.append(SeriesItem(series, n, len(plan["stacks"]),
                                        tuple((sop, int(f)) for sop, f in stack["slices"]),
                                        tuple(tuple(r) for r in stack["affine"])))
            for irregular in plan["irregular"]:
                self.skipped.append(Skipped(series, irregular["reason"], len(irregular["slices"])))
        return items

    @staticmethod
    def _plan_path(rows: list[dict[str, Any]]) -> str:
        """Where a series' stacks are cached: named by what they were planned from (its objects' SHA-256)."""
        key = sha256_hex("\n".join([PLAN_FORMAT, *sorted(r["sha256"] for r in rows)]).encode())
        return f"stacks/{key[:2]}/{key}.json"

    def _study_metadata(self, study: str) -> dict[str, volume.Attributes]:
        """The instances of a study in the collection's partition, as what planning reads."""
        out: dict[str, volume.Attributes] = {}
        for entry in self.archive.study_metadata(self.collection, study):
            kept = {tag: value for tag, value in entry.items() if tag in _PLAN_TAGS}
            ds: volume.Attributes = (
                Dataset.from_json(kept, bulk_data_uri_handler=lambda tag, vr, uri: b"")
                if _FUNCTIONAL_GROUPS & kept.keys() else _JsonAttributes(kept))
            out[str(ds.get("SOPInstanceUID", ""))] = ds
        return out

    def _plan(self, rows: list[dict[str, Any]], metadata: dict[str, volume.Attributes]) -> dict[str, Any]:
        frames = []
        for row in rows:
            ds = metadata.get(row["sop_instance_uid"])
            if ds is None:
                raise ArchiveError(f"the metadata of study {row['study_instance_uid']} does not list "
                                   f"{row['sop_instance_uid']} of the manifest")
            frames.extend(volume.frames_of(ds))
        stacks, irregular = volume.plan(frames)
        return {"format": PLAN_FORMAT,
                "stacks": [{"slices": [list(f.key) for f in s.frames], "affine": s.affine.tolist()}
                           for s in stacks],
                "irregular": [{"slices": [list(f.key) for f in i.frames], "reason": i.reason}
                              for i in irregular]}

    # ---- objects -----------------------------------------------------------------------------------
    def _thread_pool(self) -> ThreadPoolExecutor:
        """This process's fetching threads (a fork's child makes its own)."""
        if self._pool is None or self._pool_pid != os.getpid():
            self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="dicomgw-fetch")
            self._pool_pid = os.getpid()
        return self._pool

    def objects(self, rows: list[dict[str, Any]]) -> dict[str, bytes]:
        """The verified bytes of the rows' objects by SHA-256 (see ``_arrivals``)."""
        return dict(self._arrivals(*self._in_cache(rows)))

    def _in_cache(self, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The rows whose object is in the cache, and the others: known without a read (nor a thread), so
        a cold cache costs nothing."""
        there: list[dict[str, Any]] = []
        missing: list[dict[str, Any]] = []
        for row in rows:
            (there if row["sha256"] in self.cache else missing).append(row)
        return there, missing

    def _arrivals(self, there: list[dict[str, Any]], missing: list[dict[str, Any]],
                  ) -> Iterator[tuple[str, bytes]]:
        """(SHA-256, verified bytes) of the rows' objects as they come: those ``there`` from the cache
        (read and checked concurrently; a damaged or evicted one is fetched), then the ``missing``,
        fetched concurrently, each as soon as it is in, straight from the archive's store where it hands
        out presigned URLs (no archive process touches the bytes: written to the cache's staging by the
        fetching threads, renamed into place under one lock once the last has come; a lock per object
        kept the threads waiting on each other); what is left by WADO-RS (``_fetch_rest``)."""
        missing = list(missing)
        for row, data in zip(there, self._pool_map(self._cached, there), strict=True):
            if data is None:
                missing.append(row)  # damaged, or evicted meanwhile
            else:
                yield row["sha256"], data
        if not missing:
            return
        straight = [(row, url) for row in missing if (url := self._direct.get(row["sop_instance_uid"]))]
        done: set[str] = set()
        if straight:
            futures = [self._thread_pool().submit(self._fetch_direct, wanted) for wanted in straight]
            staged: list[Staged] = []
            committed = False
            try:
                for future in as_completed(futures):
                    got = future.result()
                    if got is not None:
                        data, one = got
                        staged.append(one)
                        done.add(one.sha256)
                        yield one.sha256, data
                self.cache.commit(staged)
                committed = True
            finally:
                if not committed:  # given up (the consumer stopped, or a read failed): nothing is kept
                    for future in futures:
                        future.cancel()
                    wait(futures)
                    left_staged = set(staged)
                    for future in futures:
                        if not future.cancelled() and future.exception() is None:
                            late = future.result()
                            if late is not None:
                                left_staged.add(late[1])
                    self.cache.discard(list(left_staged))
        left = [row for row in missing if row["sha256"] not in done]
        if left:
            yield from self._fetch_rest(left).items()

    def _pool_map(self, function: Callable[[Any], Any], values: list[Any]) -> list[Any]:
        if len(values) <= 1:
            return [function(v) for v in values]
        return list(self._thread_pool().map(function, values))

    def _close_pool(self) -> None:
        if self._pool is not None and self._pool_pid == os.getpid():
            self._pool.shutdown(wait=True)
        self._pool, self._pool_pid = None, 0

    def _fetch(self, row: dict[str, Any]) -> bytes:
        data = self.archive.instance(self.collection, row["study_instance_uid"], row["series_instance_uid"],
                                     row["sop_instance_uid"])
        try:
            self.cache.put(row["sha256"], data)  # verified against the manifest's SHA-256 there
        except IntegrityError:
            raise IntegrityError(f"{row['path']}: the archive sent bytes whose SHA-256 is not the "
                                 "manifest's") from None
        return data

    def _cached(self, row: dict[str, Any]) -> bytes | None:
        return self.cache.get(row["sha256"])

    def _fetch_direct(self, wanted: tuple[dict[str, Any], str]) -> tuple[bytes, Staged] | None:
        """The object of a row straight from the archive's store by its presigned URL, checked against
        the manifest and written to the cache's staging; None when the store did not give it (then
        WADO-RS)."""
        row, url = wanted
        data = self.archive.store.get(url)
        if data is None or sha256_hex(data) != row["sha256"]:
            return None
        return data, self.cache.stage(row["sha256"], data)

    def _fetch_rest(self, rows: list[dict[str, Any]]) -> dict[str, bytes]:
        """Fetched by WADO-RS, checked and cached, concurrently: with one request for a series when at
        least SERIES_REQUEST_MIN of its objects are missing and they are at least half of it; what is
        left (or came with other bytes), one request each."""
        out: dict[str, bytes] = {}
        by_series: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            by_series[(row["study_instance_uid"], row["series_instance_uid"])].append(row)
        whole = [group for (_, series), group in by_series.items()
                 if len(group) >= SERIES_REQUEST_MIN and 2 * len(group) >= self._series_sizes[series]]
        for got_series in self._pool_map(self._fetch_series, whole):
            out.update(got_series)
        left = [row for row in rows if row["sha256"] not in out]
        for row, data in zip(left, self._pool_map(self._fetch, left), strict=True):
            out[row["sha256"]] = data
        return out

    def _fetch_series(self, rows: list[dict[str, Any]]) -> dict[str, bytes]:
        """The rows' objects (of one series) that one request for the series brought, checked and
        cached; the series' other objects of the selection are cached too. The parts are hashed and
        written to the cache by other threads while the next ones arrive. A refusal, or an answer cut
        short, leaves what is missing to the requests per object."""
        wanted = frozenset(row["sha256"] for row in rows)
        study, series = rows[0]["study_instance_uid"], rows[0]["series_instance_uid"]
        kept: list[Future[dict[str, bytes]]] = []
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="dicomgw-keep") as keeper:
            parts: list[bytes] = []
            size = 0
            try:
                for data in self.archive.series_parts(self.collection, study, series):
                    parts.append(data)
                    size += len(data)
                    if size >= KEEP_BYTES:
                        kept.append(keeper.submit(self._keep, parts, wanted))
                        parts, size = [], 0
            except ArchiveError as exc:
                log.info("series %s in one request: %s; the rest is fetched per instance", series, exc)
            if parts:
                kept.append(keeper.submit(self._keep, parts, wanted))
            got: dict[str, bytes] = {}
            for future in kept:
                got.update(future.result())
        return got

    def _keep(self, parts: list[bytes], wanted: frozenset[str]) -> dict[str, bytes]:
        """The parts that are objects of the selection, cached (by SHA-256): those ``wanted`` returned."""
        hashed = ((sha256_hex(data), data) for data in parts)
        known = [(sha256, data) for sha256, data in hashed if sha256 in self._shas]
        self.cache.put_many(known, checked=True)
        return {sha256: data for sha256, data in known if sha256 in wanted}

    # ---- items' contents ---------------------------------------------------------------------------
    def _series(self, item: SeriesItem, arrivals: Iterable[tuple[str, bytes]]) -> Item:
        rows = self._item_rows(item)
        assembly = volume.Assembly(item.slices)
        frames: dict[tuple[str, int], volume.Frame] = {}
        for _, data in arrivals:
            ds, pixels = volume.read(data)
            own = volume.frames_of(ds)
            frames.update((f.key, f) for f in own)
            assembly.add(ds, own, pixels)
        try:
            wanted = [frames[key] for key in item.slices]
        except KeyError as exc:
            raise GeometryError(f"series {item.series_instance_uid}: frame {exc} is not in its "
                                "object") from None
        # the objects' own geometry, not only their metadata's: the same single regular stack, or no volume
        stacks, irregular = volume.plan(wanted)
        if (irregular or len(stacks) != 1 or [f.key for f in stacks[0].frames] != list(item.slices)
                or not np.allclose(stacks[0].affine, np.asarray(item.affine), atol=1e-5)):
            raise GeometryError(f"series {item.series_instance_uid}: the objects' geometry is not the "
                                "metadata's the stack was planned from")
        stack = stacks[0]
        by_sop = {row["sop_instance_uid"]: row for row in rows}
        slice_rows = [by_sop[sop] for sop, _ in item.slices]
        meta: dict[str, Any] = {c: rows[0][c] for c in SERIES_COLUMNS if c in rows[0]}
        for column in rows[0]:
            if column not in SERIES_COLUMNS:
                meta[column] = [r[column] for r in slice_rows]
        meta.update(frame=[f + 1 for _, f in item.slices], stack=item.stack, stacks=item.stacks)
        return {"image": assembly.result(), "affine": stack.affine, "meta": meta}

    def _frame(self, item: FrameItem, arrivals: Iterable[tuple[str, bytes]]) -> Item:
        row = self.rows[item.row]
        data = dict(arrivals)[row["sha256"]]
        ds, pixels = volume.read(data)
        frame = volume.frames_of(ds)[item.frame]
        meta = dict(row)
        meta["frame"] = item.frame + 1
        return {"image": volume.real_world(ds, item.frame, pixels=pixels),
                "affine": volume.frame_affine(frame), "meta": meta}


# what the background thread of an iteration hands on: an object, the item's end, or its failure
_ARRIVED, _DONE, _FAILED = 0, 1, 2


def _drained(arrived: queue.SimpleQueue[tuple[int, Any]]) -> Iterator[tuple[str, bytes]]:
    """The objects put in ``arrived`` until the item's end; the background thread's failure raised."""
    while True:
        kind, value = arrived.get()
        if kind == _DONE:
            return
        if kind == _FAILED:
            raise value
        yield value
