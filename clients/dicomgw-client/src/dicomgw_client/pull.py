"""Pull a collection version into a folder: every file verified against the manifest, resumable.

``pull(url, collection, dest)`` downloads the instances of a complete version (WADO-RS, as stored),
``concurrency`` at a time over as many connections (a series with at least ``api.SERIES_REQUEST_MIN``
instances to fetch, and half of it, with one request for the series, split as it arrives), and checks
each one's SHA-256 against the manifest as it arrives; with ``nifti=True`` also the version's NIfTI
volumes and their sidecars. Then it writes ``manifest.parquet`` and ``manifest.csv`` in ``dest``: the
version's manifest, the same rows in the same order, with ``path`` the local file relative to ``dest``.
``layout`` places the instances: a template over the manifest's columns
(``{patient_id}/{series_instance_uid}/{sop_instance_uid}.dcm``; by default ``{path}``, the manifest's
own path). The manifest is written last: one in ``dest`` lists only files that are there, whole and
verified.

Resuming. Each file is written to a temporary file in ``dest/.dicomgw-pull/tmp`` and renamed into
place, so a killed pull leaves whole files or none (the next pull clears what it left there). Each
file verified is recorded in ``dest/.dicomgw-pull/verified.jsonl`` (path, SHA-256, size, modification
and change times in ns): a later pull trusts a file whose size and times are still the recorded ones,
hashes any other file it finds in place (every one with ``rehash=True``), and fetches only what is
missing or not the manifest's. A pull killed after k of n files fetches the n - k others, nothing
twice. One pull at a time into a folder (an ``fcntl`` lock).

NIfTI files have no SHA-256 in what a version publishes: they are checked as they arrive (a .nii.gz
read through, which checks its gzip CRC-32 and length; a JSON sidecar parsed) and the SHA-256 they
had is recorded for that archive, collection and version, so that a damaged one is found later; a
volume of a version not pulled into ``dest`` before is fetched again.

A version never changes: pulling it again, even after later versions are published, gives the same
files and the same manifest bytes (``PullResult.manifest_sha256``).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import functools
import gzip
import hashlib
import io
import itertools
import json
import logging
import os
import queue
import shutil
import stat
import string
import tempfile
import threading
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq

from dicomgw_client.api import (
    INSTANCE_ACCEPT,
    RETRY_STATUS,
    SERIES_REQUEST_MIN,
    Archive,
    DirectURLs,
    MultipartSplitter,
    boundary_of,
    problem_text,
    retry_delay,
    single_part,
)
from dicomgw_client.errors import ArchiveError, ArchiveUnreachable, ClientError, IntegrityError
from dicomgw_client.journal import Journal, VolumeKey
from dicomgw_client.progress import Progress

log = logging.getLogger("dicomgw_client.pull")

STATE = ".dicomgw-pull"
DEFAULT_LAYOUT = "{path}"
# the object as stored, in one part: its bytes are what the manifest's SHA-256 is of
DICOM_ACCEPT = "application/dicom; transfer-syntax=*"
CHUNK = 1 << 20
# a version's small files, copied as published (volumes.csv too, with nifti)
PUBLISHED = ("report.json", "exclusions.csv")
# names of dest's top level that are the pull's own: no instance is placed there
RESERVED = frozenset({"manifest.csv", "manifest.parquet", "volumes.csv", *PUBLISHED, STATE})
FAILURES_SHOWN = 5
# files handed to the fetch threads at once, per thread
WINDOW = 4


@dataclass(frozen=True)
class PullResult:
    collection: str
    version: int
    dest: Path
    instances: int
    volumes: int  # NIfTI files: volumes and sidecars
    fetched: int  # files this pull downloaded
    present: int  # files already in dest with the right bytes
    repaired: int  # files in dest whose bytes were wrong, fetched again (counted in fetched)
    bytes_fetched: int
    requests: int  # HTTP requests sent
    manifest_sha256: str  # of dest/manifest.parquet


@dataclass(frozen=True)
class Target:
    """One file to have in dest."""

    path: str  # local, relative to dest
    url: str
    accept: str
    sha256: str | None  # the manifest's (volumes.csv's for a NIfTI file); None when not listed
    volume_key: VolumeKey | None = None
    # the instance's SOP Instance UID, when the archive hands out a presigned URL of its object in the
    # store: fetched from there first, at the store's speed (checked as any answer), WADO-RS if that fails
    direct: str | None = None


@dataclass(frozen=True)
class SeriesBatch:
    """The instances of one series, fetched with one request for the series when enough of them are
    missing (``api.SERIES_REQUEST_MIN``, and at least half of them), else one request each."""

    url: str  # the series' WADO-RS URL
    targets: tuple[Target, ...]


def batched(targets: list[Target], rows: list[dict[str, Any]], archive: Archive,
            collection: str) -> list[Target | SeriesBatch]:
    """The instances' targets, those of each series of at least SERIES_REQUEST_MIN instances as one
    batch (where its first instance was), the others as they are."""
    by_series: dict[tuple[str, str], list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        # a pull copies files: straight from the store, when the archive hands out its URLs, is the
        # same work as copying them from it, and leaves the archive out of the way
        if targets[index].direct is None:
            by_series[(row["study_instance_uid"], row["series_instance_uid"])].append(index)
    first: dict[int, SeriesBatch] = {}
    member: set[int] = set()
    for (study, series), indices in by_series.items():
        if len(indices) >= SERIES_REQUEST_MIN:
            first[indices[0]] = SeriesBatch(archive.series_url(collection, study, series),
                                            tuple(targets[i] for i in indices))
            member.update(indices)
    out: list[Target | SeriesBatch] = []
    for index, target in enumerate(targets):
        if index in first:
            out.append(first[index])
        elif index not in member:
            out.append(target)
    return out


# ---- layout -----------------------------------------------------------------------------------------
def _segment(value: str) -> str:
    """A column's value as one path segment: no separator, never empty, "." or ".."."""
    text = value.replace("/", "_").replace("\\", "_").replace("\0", "_").strip()
    return "_" if text in ("", ".", "..") else text


def _checked_path(path: str, template: str) -> str:
    parts = path.split("/")
    if (path.startswith("/") or "\0" in path or "\\" in path
            or any(part in ("", ".", "..") for part in parts)):
        raise ClientError(f"{template!r} gives {path!r}: not a relative path inside the folder")
    if parts[0] in RESERVED:
        raise ClientError(f"{template!r} gives {path!r}: {parts[0]} is the pull's own")
    return str(PurePosixPath(path))


def local_paths(rows: list[dict[str, Any]], layout: str = DEFAULT_LAYOUT) -> list[str]:
    """Each row's path in dest: ``layout`` formatted with the row's columns (each value one segment,
    but ``path``'s own), checked to stay inside dest and to name every row's file apart."""
    columns = set(rows[0]) if rows else set()
    formatter = string.Formatter()
    try:
        fields = [field for _, field, _, _ in formatter.parse(layout) if field is not None]
    except ValueError as exc:
        raise ClientError(f"--layout {layout!r}: {exc}") from None
    for field in fields:
        if field not in columns and rows:
            raise ClientError(f"--layout {layout!r}: no manifest column {field!r}; columns: "
                              f"{', '.join(sorted(columns))}")
    out = []
    for row in rows:
        values = {k: _segment(v) if isinstance(v, str) and k != "path" else v for k, v in row.items()}
        try:
            out.append(_checked_path(formatter.vformat(layout, (), values), layout))
        except (ValueError, TypeError) as exc:
            raise ClientError(f"--layout {layout!r}: {exc}") from None
    seen: dict[str, int] = {}
    for index, path in enumerate(out):
        if path in seen:
            first, second = rows[seen[path]]["sop_instance_uid"], rows[index]["sop_instance_uid"]
            raise ClientError(f"--layout {layout!r} gives {path} to two instances ({first} and {second}): "
                              "add {sop_instance_uid}")
        seen[path] = index
    return out


# ---- files ------------------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_volume(path: Path, name: str) -> None:
    """IntegrityError unless ``path`` is a whole .nii.gz (read through: gzip's CRC-32 and length) or a
    JSON document."""
    try:
        if name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                while f.read(CHUNK):
                    pass
        elif name.endswith(".json"):
            json.loads(path.read_bytes())
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise IntegrityError(f"{name}: the archive sent a damaged file "
                             f"({type(exc).__name__}: {exc})") from None


@dataclass
class Counts:
    fetched: int = 0
    present: int = 0
    repaired: int = 0
    bytes: int = 0

    def add(self, outcome: str, size: int) -> None:
        self.present += outcome == "present"
        self.fetched += outcome != "present"
        self.repaired += outcome == "repaired"
        self.bytes += size


class _Stopped(Exception):
    """The pull is being interrupted: a download in flight gives up."""


class _Pull:
    """One pull into ``dest``, under its lock, with its record of verified files."""

    def __init__(self, archive: Archive, dest: Path, *, concurrency: int, rehash: bool,
                 progress: Progress | None, direct: DirectURLs | None = None) -> None:
        self.archive, self.dest, self.concurrency, self.rehash = archive, dest, concurrency, rehash
        self.direct = direct
        self.progress = progress
        self.state = dest / STATE
        self.tmp = self.state / "tmp"
        self.stop = threading.Event()
        self.journal: Journal | None = None
        self._folders: set[Path] = set()  # made by this pull (or found there)
        # names of temporary files in tmp, which only this pull writes (it holds dest's lock)
        self._names = itertools.count()

    @contextlib.contextmanager
    def opened(self) -> Iterator[None]:
        self.state.mkdir(parents=True, exist_ok=True)
        with open(self.state / "lock", "a+b") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ClientError(f"another pull into {self.dest} is running") from None
            # what a killed pull was writing: never a whole file
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp.mkdir()
            self.journal = Journal(self.state / "verified.jsonl")
            try:
                yield
            finally:
                self.journal.close(self.dest)
                shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- one file -------------------------------------------------------------------------------------
    def folder(self, path: Path) -> None:
        """``path`` made (with its parents) unless this pull already has: a pull of thousands of files
        in a few folders need not ask the file system each time."""
        if path not in self._folders:
            path.mkdir(parents=True, exist_ok=True)
            self._folders.add(path)

    def place(self, data: bytes, relative: str) -> None:
        """``data`` at ``dest/relative``, whole or not at all."""
        fd, temporary = tempfile.mkstemp(dir=self.tmp, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            final = self.dest / relative
            self.folder(final.parent)
            os.replace(temporary, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise

    def ensure(self, target: Target) -> tuple[str, int]:
        """("present", 0) when the file is in place with the right bytes, else ("fetched" or "repaired",
        the bytes fetched)."""
        if self.stop.is_set():
            raise _Stopped
        outcome = self.check(target)
        return (outcome, 0) if outcome == "present" else (outcome, self.fetch(target))

    def check(self, target: Target) -> str:
        """"present" when the file is in place with the right bytes, "repaired" when a file with other
        bytes is there, else "fetched" (what fetching it will be)."""
        assert self.journal is not None
        final = self.dest / target.path
        expected = target.sha256
        if expected is None and target.volume_key is not None:
            expected = self.journal.volumes.get(target.volume_key)
        try:
            st = final.stat()
        except (FileNotFoundError, NotADirectoryError):
            return "fetched"
        if expected is not None and stat.S_ISREG(st.st_mode):
            known = None if self.rehash else self.journal.trusted(target.path, st)
            if known is None:
                known = sha256_file(final)
                if known == expected:
                    self.journal.record(target.path, known, st)
            if known == expected:
                return "present"
            log.warning("%s: not the bytes it should have, fetched again", final)
            return "repaired"
        return "fetched"

    # ---- a series in one request ------------------------------------------------------------------------
    def ensure_batch(self, batch: SeriesBatch) -> list[tuple[Target, str, int, str]]:
        """(target, outcome, bytes fetched, "") for each instance of the batch, or (target, "", 0, why it
        failed): the missing ones with one request for the series when there are enough of them, what
        that answer lacked (or sent other bytes of) with a request each."""
        if self.stop.is_set():
            raise _Stopped
        done: list[tuple[Target, str, int, str]] = []
        missing: list[tuple[Target, str]] = []
        for target in batch.targets:
            outcome, _, failure = _guarded(target, functools.partial(self._checked, target))
            if failure or outcome == "present":
                done.append((target, outcome, 0, failure))
            else:
                missing.append((target, outcome))
        placed: dict[str, int] = {}
        if len(missing) >= SERIES_REQUEST_MIN and 2 * len(missing) >= len(batch.targets):
            try:
                placed = self.fetch_series(batch.url, [target for target, _ in missing])
            except OSError as exc:  # its temporary files: said again by the requests per instance
                log.warning("%s: %s; fetched per instance", batch.url, exc)
        for target, outcome in missing:
            if target.path in placed:
                done.append((target, outcome, placed[target.path], ""))
            else:
                done.append((target, *_guarded(target, functools.partial(self._fetched, target, outcome))))
        return done

    def _checked(self, target: Target) -> tuple[str, int]:
        return self.check(target), 0

    def _fetched(self, target: Target, outcome: str) -> tuple[str, int]:
        return outcome, self.fetch(target)

    def fetch_series(self, url: str, targets: list[Target]) -> dict[str, int]:
        """Bytes placed by path: the targets whose SHA-256 came in the series' answer (each part streamed
        to a temporary file, hashed, renamed into place when it is one of them). A refusal or an answer
        cut short places what came whole and leaves the rest to the requests per instance."""
        assert self.journal is not None
        waiting: dict[str, list[Target]] = defaultdict(list)
        for target in targets:
            assert target.sha256 is not None
            waiting[target.sha256].append(target)
        placed: dict[str, int] = {}
        out: IO[bytes] | None = None
        temporary = Path()
        digest, size = hashlib.sha256(), 0
        try:
            with self.archive.client.stream("GET", url, headers={"Accept": INSTANCE_ACCEPT}) as answer:
                boundary = boundary_of(answer.headers.get("content-type", ""))
                if answer.status_code != 200 or boundary is None:
                    answer.read()
                    log.info("%s: HTTP %d, %s: fetched per instance", url, answer.status_code,
                             answer.headers.get("content-type", ""))
                    return placed
                splitter = MultipartSplitter(boundary)
                for chunk in answer.iter_bytes():
                    if self.stop.is_set():
                        raise _Stopped
                    for event, data in splitter.feed(chunk):
                        if event == "begin":
                            fd, name = tempfile.mkstemp(dir=self.tmp, suffix=".part")
                            out, temporary = os.fdopen(fd, "wb"), Path(name)
                            digest, size = hashlib.sha256(), 0
                        elif event == "data":
                            assert out is not None and data is not None
                            out.write(data)
                            digest.update(data)
                            size += len(data)
                        else:
                            assert out is not None
                            out.close()
                            out = None
                            self._place_part(temporary, digest.hexdigest(), size, waiting, placed)
        except httpx.TransportError as exc:
            log.warning("%s: %s: %s; the rest is fetched per instance", url, type(exc).__name__, exc)
        finally:
            if out is not None:
                out.close()
                with contextlib.suppress(FileNotFoundError):
                    temporary.unlink()
        return placed

    def _place_part(self, temporary: Path, sha256: str, size: int, waiting: dict[str, list[Target]],
                    placed: dict[str, int]) -> None:
        """A part of a series' answer in its target's place when it is one the pull waits for."""
        assert self.journal is not None
        targets = waiting.get(sha256)
        try:
            if not targets:
                return  # an instance of the series this version does not have, or not as stored
            target = targets.pop()
            final = self.dest / target.path
            self.folder(final.parent)
            os.replace(temporary, final)
        except OSError:
            return  # this file's place (a folder there, no permission): said by its own request
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
        self.journal.record(target.path, sha256, final.stat())
        placed[target.path] = size

    def fetch(self, target: Target) -> int:
        assert self.journal is not None
        temporary = self.tmp / f"{next(self._names)}.part"
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w+b") as out:
                sha256, size = self.download(target, out)
            if target.sha256 is not None and sha256 != target.sha256:
                raise IntegrityError(f"{target.path}: the archive sent bytes whose SHA-256 is not the "
                                     "manifest's")
            if target.sha256 is None:
                check_volume(temporary, target.path)
            final = self.dest / target.path
            self.folder(final.parent)
            os.replace(temporary, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            raise
        self.journal.record(target.path, sha256, final.stat())
        if target.volume_key is not None:
            self.journal.record_volume(target.volume_key, sha256)
        return size

    def download(self, target: Target, out: IO[bytes]) -> tuple[str, int]:
        """The answer's body into ``out``, streamed and hashed; retried on connection errors, 429 and 5xx.
        A target with a presigned URL is read from the store first; WADO-RS when that fails or the bytes
        are not the manifest's."""
        url = self.direct.get(target.direct) if self.direct is not None and target.direct else None
        if url is not None:
            got = self.archive.store.read_into(url, out, self._check_stop)
            if got is not None and (target.sha256 is None or got[0] == target.sha256):
                return got
            log.info("%s: the store did not give the object: through the archive", target.path)
        retries = self.archive.retries
        for attempt in range(retries + 1):
            out.seek(0)
            out.truncate()
            try:
                headers = {"Accept": target.accept}
                with self.archive.client.stream("GET", target.url, headers=headers) as answer:
                    if answer.status_code not in RETRY_STATUS or attempt == retries:
                        return self._body(answer, target, out)
            except httpx.TransportError as exc:
                if attempt == retries:
                    raise ArchiveUnreachable(f"{target.url}: {type(exc).__name__}: {exc}") from exc
            if self.stop.wait(retry_delay(attempt)):
                raise _Stopped
        raise AssertionError("unreachable")

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise _Stopped

    def _body(self, answer: httpx.Response, target: Target, out: IO[bytes]) -> tuple[str, int]:
        if answer.status_code >= 400:
            answer.read()
            raise ArchiveError(f"{target.url}: {problem_text(answer)}")
        digest, size = hashlib.sha256(), 0
        if answer.headers.get("content-type", "").split(";")[0].strip().lower() == "multipart/related":
            # a server that answers in parts only: one part, read whole
            answer.read()
            data = single_part(answer)
            out.write(data)
            return hashlib.sha256(data).hexdigest(), len(data)
        for chunk in answer.iter_bytes():  # as they come: re-chunking them costs 3x the CPU
            if self.stop.is_set():
                raise _Stopped
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
        return digest.hexdigest(), size

    # ---- every file -------------------------------------------------------------------------------------
    def run(self, targets: list[Target | SeriesBatch]) -> tuple[Counts, list[str]]:
        """Every target in place, ``concurrency`` at a time; the counts and what failed (a file the archive
        refused or sent damaged: the others go on). The archive out of reach stops the pull. Targets are
        handed to the threads a few at a time, not all at once: a collection may list millions. A series'
        batch is one of them (see ``ensure_batch``)."""
        counts, failures = Counts(), []
        pending: dict[Future[Any], Target | SeriesBatch] = {}
        waiting = iter(targets)
        # each future says it is done here: waiting on all of those pending, each time one is done, held
        # the GIL for a sixth of a pull of small files (py-spy)
        finished: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="dicomgw-pull") as pool:
            try:
                while True:
                    for work in itertools.islice(waiting, WINDOW * self.concurrency - len(pending)):
                        future: Future[Any]
                        if isinstance(work, SeriesBatch):
                            future = pool.submit(self.ensure_batch, work)
                        else:
                            future = pool.submit(self.ensure, work)
                        pending[future] = work
                        future.add_done_callback(finished.put)
                    if not pending:
                        break
                    done = [finished.get()]
                    with contextlib.suppress(queue.Empty):
                        while True:
                            done.append(finished.get_nowait())
                    for future in done:
                        work = pending.pop(future)
                        if isinstance(work, SeriesBatch):
                            outcomes = [(failure, outcome, size)
                                        for _, outcome, size, failure in future.result()]
                        else:
                            failure, size = self._outcome(future, work, counts)
                            outcomes = [(failure, "", size)]
                        for failure, outcome, size in outcomes:
                            if failure:
                                failures.append(failure)
                            elif outcome:
                                counts.add(outcome, size)
                            if self.progress is not None:
                                self.progress.advance(size)
            except BaseException:
                # a download in flight gives up at its next chunk; none waiting begins
                self.stop.set()
                for future in pending:
                    future.cancel()
                raise
        return counts, failures

    @staticmethod
    def _outcome(future: Future[tuple[str, int]], target: Target, counts: Counts) -> tuple[str, int]:
        """("", bytes fetched) counted, or (why it failed, 0)."""
        try:
            outcome, size = future.result()
        except (ArchiveUnreachable, _Stopped):
            raise
        except ClientError as exc:
            return str(exc), 0
        except OSError as exc:  # this file's place (a folder there, no permission)
            return f"{target.path}: {exc}", 0
        counts.add(outcome, size)
        return "", size


def _guarded(target: Target, call: Callable[[], tuple[str, int]]) -> tuple[str, int, str]:
    """(outcome, bytes fetched, "") of ``call``, or ("", 0, why it failed) when this file could not be
    had (the archive refused it or sent it damaged, or its place is taken); the archive out of reach
    and a stop go on up."""
    try:
        outcome, size = call()
    except (ArchiveUnreachable, _Stopped):
        raise
    except ClientError as exc:
        return "", 0, str(exc)
    except OSError as exc:  # this file's place (a folder there, no permission)
        return "", 0, f"{target.path}: {exc}"
    return outcome, size, ""


# ---- the manifest ------------------------------------------------------------------------------------
def local_manifest(table: pa.Table, paths: list[str]) -> tuple[bytes, bytes]:
    """The version's manifest with ``path`` the local files: (Parquet, CSV), the same bytes every time."""
    column = pa.array(paths, pa.string())
    index = table.schema.get_field_index("path")
    table = table.append_column("path", column) if index < 0 else table.set_column(index, "path", column)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=table.column_names)  # as the archive writes its CSV
    writer.writeheader()
    writer.writerows(table.to_pylist())
    return sink.getvalue().to_pybytes(), text.getvalue().encode("utf-8")


def retire_manifest(dest: Path, paths: list[str], rows: list[dict[str, Any]]) -> None:
    """Remove dest's manifest when this pull may put other bytes where it lists a file (an earlier pull
    with another layout): a manifest in dest never names a file it does not describe, even while a pull
    that will write a new one is under way or after it stopped."""
    old = dest / "manifest.parquet"
    if not old.exists():
        return
    try:
        listed = pq.read_table(old, columns=["path", "sha256"]).to_pydict()
        before = dict(zip(listed["path"], listed["sha256"], strict=True))
        same = all(before.get(path, row["sha256"]) == row["sha256"]
                   for path, row in zip(paths, rows, strict=True))
    except (pa.ArrowException, OSError, ValueError):
        same = False
    if not same:
        for name in ("manifest.parquet", "manifest.csv"):
            with contextlib.suppress(FileNotFoundError):
                (dest / name).unlink()


def choose(collection: str, versions: list[dict[str, Any]], version: int | str | None) -> dict[str, Any]:
    if not versions:
        raise ArchiveError(f"the collection {collection} has no complete version yet")
    if version is None or str(version) == "latest":
        return versions[-1]
    for v in versions:
        if str(v["version"]) == str(version):
            return v
    raise ArchiveError(f"the collection {collection} has no complete version {version} (complete: "
                       f"{', '.join(str(v['version']) for v in versions)})")


def _volume_targets(archive: Archive, collection: str, chosen: Mapping[str, Any],
                    listing: bytes) -> list[Target]:
    number = int(chosen["version"])
    targets = []
    for entry in csv.DictReader(io.StringIO(listing.decode("utf-8"))):
        for filename, sha256 in ((entry.get("path", ""), entry.get("sha256")),
                                 (entry.get("sidecar", ""), entry.get("sidecar_sha256"))):
            if not filename:
                continue  # a series dcm2niix could not convert (its error is in volumes.csv)
            if filename not in chosen["files"]:
                raise ArchiveError(f"volumes.csv of version {number} lists {filename}, which the version "
                                   "does not publish")
            targets.append(Target(_checked_path(filename, "volumes.csv"),
                                  archive.version_file_url(collection, number, filename), "*/*",
                                  sha256 or None,  # listed since volumes.csv has SHA-256 columns
                                  (archive.root, collection, number, filename)))
    return targets


def pull(url: str, collection: str, dest: str | os.PathLike[str], *, version: int | str | None = None,
         layout: str | None = None, nifti: bool = False, token: str | None = None, concurrency: int = 8,
         rehash: bool = False, timeout: float = 120.0, retries: int = 4,
         progress: Progress | None = None) -> PullResult:
    """Pull ``version`` (default: the latest complete one) of ``collection`` from the gateway whose
    DICOMweb root is ``url`` into ``dest`` (see the module's docstring). ClientError when a file could not
    be pulled (every other one is in place: run it again to resume)."""
    if concurrency < 1:
        raise ValueError("concurrency is at least 1")
    token = token if token is not None else os.environ.get("DICOMGW_TOKEN")
    archive = Archive(url, token, timeout=timeout, retries=retries, connections=concurrency)
    try:
        return _pull(archive, collection, Path(dest), version=version, layout=layout or DEFAULT_LAYOUT,
                     nifti=nifti, concurrency=concurrency, rehash=rehash, progress=progress)
    finally:
        archive.close()


def _pull(archive: Archive, collection: str, dest: Path, *, version: int | str | None, layout: str,
          nifti: bool, concurrency: int, rehash: bool, progress: Progress | None) -> PullResult:
    chosen = choose(collection, archive.versions(collection), version)
    number = int(chosen["version"])
    table = pq.read_table(io.BytesIO(archive.version_file(collection, number, "manifest.parquet")))
    rows = table.to_pylist()
    paths = local_paths(rows, layout)
    direct = DirectURLs(archive, collection, number)
    targets = [Target(path, archive.instance_url(collection, row["study_instance_uid"],
                                                 row["series_instance_uid"], row["sop_instance_uid"]),
                      DICOM_ACCEPT, row["sha256"],
                      direct=row["sop_instance_uid"] if direct.get(row["sop_instance_uid"]) else None)
               for path, row in zip(paths, rows, strict=True)]
    published = {name: archive.version_file(collection, number, name)
                 for name in PUBLISHED if name in chosen["files"]}
    volumes: list[Target] = []
    if nifti:
        if "volumes.csv" not in chosen["files"]:
            raise ClientError(f"version {number} of {collection} has no NIfTI volumes (the collection was "
                              "defined without --nifti)")
        published["volumes.csv"] = archive.version_file(collection, number, "volumes.csv")
        volumes = _volume_targets(archive, collection, chosen, published["volumes.csv"])
    duplicated = {t.path for t in volumes} & set(paths)
    if duplicated:
        raise ClientError(f"--layout {layout!r} places instances where the NIfTI files go: "
                          f"{sorted(duplicated)[0]}")
    parquet, text = local_manifest(table, paths)
    dest.mkdir(parents=True, exist_ok=True)
    puller = _Pull(archive, dest, concurrency=concurrency, rehash=rehash, progress=progress, direct=direct)
    with puller.opened():
        retire_manifest(dest, paths, rows)
        if progress is not None:
            progress.start(f"pull {collection} v{number}", len(targets) + len(volumes))
        try:
            counts, failures = puller.run([*batched(targets, rows, archive, collection), *volumes])
        finally:
            if progress is not None:
                progress.finish()
        if failures:
            shown = "; ".join(failures[:FAILURES_SHOWN])
            raise ClientError(f"{len(failures)} of {len(targets) + len(volumes)} files could not be pulled "
                              f"(the others are in place; run it again to resume): {shown}")
        for name, data in published.items():
            puller.place(data, name)
        # last: a manifest in dest lists files that are all there
        puller.place(text, "manifest.csv")
        puller.place(parquet, "manifest.parquet")
    return PullResult(collection=collection, version=number, dest=dest, instances=len(targets),
                      volumes=len(volumes), fetched=counts.fetched, present=counts.present,
                      repaired=counts.repaired, bytes_fetched=counts.bytes, requests=archive.requests,
                      manifest_sha256=hashlib.sha256(parquet).hexdigest())
