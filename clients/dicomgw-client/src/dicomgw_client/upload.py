"""``upload``: send files and folders of DICOM instances to a DICOMweb server by STOW-RS.

Files are recognised by the DICM prefix at offset 128 (other files are skipped and counted), grouped by
Study Instance UID and sent study by study, several studies at once, each in requests of at most
--batch-mb streamed from disk. Transient failures (connection errors, 408/429/502/503/504) are retried
with exponential backoff, honouring Retry-After. The PS3.18 STOW response is read instance by instance
and summed up as stored / already present / failed (with the failure reasons). Exit status 1 when any
instance failed, 2 when a path does not exist.

"Already present" is known from a QIDO-RS search of the study made before sending: an instance the
server held already and acknowledges again is an identical re-send (a different one fails with 0x0111).
With --skip-existing, instances whose SOP Instance UID the server holds are not sent at all.

    dicomgw-client upload ./exports --url https://archive.example/dicom-web --token dgw_...
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import functools
import os
import random
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pydicom

from dicomgw_client.cli import add_connection_arguments
from dicomgw_client.progress import StatusLine

FAILURE_REASONS = {
    0xC000: "cannot understand",
    0x0122: "SOP class not supported",
    0xC122: "transfer syntax not supported",
    0xA900: "study does not match the request",
    0x0111: "duplicate SOP Instance UID with different content",
    0xA700: "out of resources",
    0x0110: "processing failure",
}
RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
# the one per-instance failure a later attempt may cure: out of resources (a back end away)
RETRYABLE_FAILURE = 0xA700
MAX_RETRY_AFTER = 120.0
CHUNK = 1 << 20
QIDO_PAGE = 5000
UNREACHABLE = "server unreachable"

# DICOM JSON tags of the STOW-RS response (PS3.18 Table 10.5.3-1)
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"
REFERENCED_SOP_INSTANCE_UID = "00081155"


@dataclass(frozen=True)
class DicomFile:
    """A PS3.10 file found on disk, with the UIDs its header gave (None when it could not be read)."""

    path: Path
    size: int
    study_instance_uid: str | None
    sop_instance_uid: str | None


@dataclass
class Scan:
    files: list[DicomFile] = field(default_factory=list)
    skipped: int = 0
    unreadable: list[tuple[Path, str]] = field(default_factory=list)


@dataclass
class Tally:
    """What happened to every instance, and which files failed why."""

    stored: int = 0
    present: int = 0
    warnings: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    def fail(self, files: Iterable[DicomFile | Path], reason: str) -> None:
        for f in files:
            self.failed[reason] += 1
            self.failures.append((str(f.path if isinstance(f, DicomFile) else f), reason))


HELP = "send DICOM files and folders by STOW-RS"


def add_parser(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
               *, prog: str = "dicomgw-client") -> argparse.ArgumentParser:
    """The ``upload`` command under ``sub`` (its run is ``args.func(args)``); ``prog`` names the
    command in its messages."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "upload", help=HELP, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_upload_arguments(parser)
    add_connection_arguments(parser)
    parser.set_defaults(func=functools.partial(run, prog=prog))
    return parser


def add_upload_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of an upload, but the connection's (``--url``, ``--token``)."""
    parser.add_argument("paths", nargs="+", type=Path, help="files and folders (searched recursively)")
    parser.add_argument("--concurrency", type=_positive_int, default=4, help="studies sent at once")
    parser.add_argument("--batch-mb", type=float, default=64,
                        help="largest STOW request in MB (a bigger single file goes alone)")
    parser.add_argument("--retries", type=int, default=5, help="retries of a transient failure")
    parser.add_argument("--timeout", type=float, default=300, help="seconds without progress")
    parser.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                        help="extra request header (repeatable)")
    parser.add_argument("--skip-existing", action="store_true",
                        help="do not send instances whose SOP Instance UID the server holds "
                             "(faster resume; their content is not compared)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


# --- finding files -----------------------------------------------------------------------------------

def _candidates(root: Path) -> Iterable[Path]:
    if root.is_file():
        yield root
        return
    for folder, _, names in os.walk(root):
        for name in sorted(names):
            yield Path(folder) / name


def _read_uids(path: Path) -> tuple[str | None, str | None]:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True,
                             specific_tags=["StudyInstanceUID", "SOPInstanceUID"])
        study, sop = ds.get("StudyInstanceUID"), ds.get("SOPInstanceUID")
    except Exception:  # a broken header is the server's to judge (0xC000), not a reason to stop
        return None, None
    return (str(study) if study else None), (str(sop) if sop else None)


def find_files(paths: Iterable[Path]) -> Scan:
    """PS3.10 files under the paths (DICM at offset 128); other files are counted as skipped."""
    scan = Scan()
    for root in paths:
        for path in _candidates(root):
            try:
                with path.open("rb") as f:
                    head = f.read(132)
                size = path.stat().st_size
            except OSError as exc:
                scan.unreadable.append((path, exc.strerror or type(exc).__name__))
                continue
            if len(head) < 132 or head[128:132] != b"DICM":
                scan.skipped += 1
                continue
            study, sop = _read_uids(path)
            scan.files.append(DicomFile(path, size, study, sop))
    return scan


def by_study(files: Iterable[DicomFile]) -> dict[str | None, list[DicomFile]]:
    groups: dict[str | None, list[DicomFile]] = defaultdict(list)
    for f in files:
        groups[f.study_instance_uid].append(f)
    return dict(groups)


def split(files: list[DicomFile], batch_bytes: int) -> list[list[DicomFile]]:
    """Consecutive batches of at most batch_bytes (a larger file makes a batch of its own)."""
    out: list[list[DicomFile]] = []
    current: list[DicomFile] = []
    size = 0
    for f in files:
        if current and size + f.size > batch_bytes:
            out.append(current)
            current, size = [], 0
        current.append(f)
        size += f.size
    if current:
        out.append(current)
    return out


# --- the request body --------------------------------------------------------------------------------

class FileChanged(Exception):
    """A file's size changed between the scan and the upload."""


@dataclass
class MultipartBody:
    """A multipart/related body of PS3.10 files, streamed from disk, with its exact length."""

    files: list[DicomFile]
    on_bytes: Callable[[int], None] = lambda n: None
    boundary: str = field(default_factory=lambda: "dicomgw-upload-" + secrets.token_hex(12))

    def _head(self) -> bytes:
        return f"--{self.boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()

    def _tail(self) -> bytes:
        return f"--{self.boundary}--\r\n".encode()

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="application/dicom"; boundary={self.boundary}'

    @property
    def content_length(self) -> int:
        framing = len(self._head()) + 2  # part head, and CRLF after the part
        return sum(f.size + framing for f in self.files) + len(self._tail())

    async def stream(self) -> AsyncIterator[bytes]:
        for f in self.files:
            yield self._head()
            left = f.size
            with f.path.open("rb") as src:
                while left > 0:
                    chunk = await asyncio.to_thread(src.read, min(CHUNK, left))
                    if not chunk:
                        raise FileChanged(f"{f.path} shrank while it was being sent")
                    left -= len(chunk)
                    self.on_bytes(len(chunk))
                    yield chunk
            yield b"\r\n"
        yield self._tail()


# --- retries -----------------------------------------------------------------------------------------

def retry_after(response: httpx.Response | None) -> float | None:
    """Seconds the server asked us to wait (Retry-After: seconds or an HTTP date), if it did."""
    if response is None:
        return None
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max((when - datetime.now(UTC)).total_seconds(), 0.0), MAX_RETRY_AFTER)


def backoff(attempt: int) -> float:
    """Exponential backoff with jitter: about 0.5, 1, 2, 4 ... seconds, at most 30."""
    return float(min(0.5 * 2**attempt, 30.0) * random.uniform(0.8, 1.2))


# --- the STOW response -------------------------------------------------------------------------------

def _values(item: dict[str, Any], tag: str) -> list[Any]:
    element = item.get(tag)
    return list(element.get("Value", [])) if isinstance(element, dict) else []


@dataclass
class StowResult:
    referenced: list[str | None]
    failed: list[tuple[str | None, int]]
    warned: int


def parse_stow_response(body: dict[str, Any]) -> StowResult:
    """ReferencedSOPSequence and FailedSOPSequence (with FailureReason) of a PS3.18 STOW response."""
    referenced, failed, warned = [], [], 0
    for item in _values(body, REFERENCED_SOP_SEQUENCE):
        referenced.append(next(iter(_values(item, REFERENCED_SOP_INSTANCE_UID)), None))
        warned += bool(_values(item, WARNING_REASON))
    for item in _values(body, FAILED_SOP_SEQUENCE):
        code = next(iter(_values(item, FAILURE_REASON)), 0x0110)
        failed.append((next(iter(_values(item, REFERENCED_SOP_INSTANCE_UID)), None), int(code)))
    return StowResult(referenced, failed, warned)


def describe_failure(code: int) -> str:
    return f"{FAILURE_REASONS.get(code, 'failure')} (0x{code:04X})"


def _http_failure(response: httpx.Response) -> str:
    detail = ""
    if "json" in response.headers.get("content-type", ""):
        try:
            problem = response.json()
            detail = str(problem.get("detail") or problem.get("title") or "") if isinstance(
                problem, dict) else ""
        except ValueError:
            detail = ""
    reason = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
    return f"{reason}: {detail}" if detail else reason


# --- sending -----------------------------------------------------------------------------------------

def _headers(args: argparse.Namespace, prog: str) -> dict[str, str]:
    headers = {"Accept": "application/dicom+json"}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise SystemExit(f"{prog} upload: --header {item!r} is not 'Name: value'")
        headers[name.strip()] = value.strip()
    return headers


class Uploader:
    """Sends studies concurrently and keeps the tally; one instance per ``upload`` run."""

    def __init__(self, args: argparse.Namespace, progress: StatusLine | None = None,
                 prog: str = "dicomgw-client") -> None:
        self.args = args
        self.progress = progress
        self.tally = Tally()
        self.client = httpx.AsyncClient(
            base_url=args.url.rstrip("/"), headers=_headers(args, prog),
            timeout=httpx.Timeout(args.timeout, connect=10),
            limits=httpx.Limits(max_connections=max(2, args.concurrency * 2)),
        )

    async def __aenter__(self) -> Uploader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    def _advance(self, instances: int = 0, size: int = 0) -> None:
        if self.progress is not None:
            self.progress.update(advance=instances, advance_bytes=size)

    async def _send(self, method: str, url: str, files: list[DicomFile] | None = None,
                    **kwargs: Any) -> tuple[httpx.Response | None, int]:
        """One request, retried on transient failures: the last response (None when the server could
        not be reached) and the bytes of files its attempt streamed (earlier attempts are uncounted)."""
        response: httpx.Response | None = None
        sent = 0
        for attempt in range(self.args.retries + 1):
            sent = 0

            def count(n: int) -> None:
                nonlocal sent
                sent += n
                self._advance(size=n)

            try:
                if files is not None:
                    body = MultipartBody(files, count)
                    kwargs["content"] = body.stream()
                    kwargs["headers"] = {"Content-Type": body.content_type,
                                         "Content-Length": str(body.content_length)}
                response = await self.client.request(method, url, **kwargs)
                if response.status_code not in RETRY_STATUSES:
                    return response, sent
            except httpx.TransportError:
                response = None
            if attempt < self.args.retries:
                self._advance(size=-sent)  # this attempt's bytes will be sent again
                await asyncio.sleep(retry_after(response) or backoff(attempt))
        return response, sent

    async def existing(self, study: str) -> set[str]:
        """SOP Instance UIDs the server holds in a study (QIDO-RS, paged); empty if it cannot say."""
        known: set[str] = set()
        while True:
            response, _ = await self._send("GET", f"/studies/{study}/instances", params={
                "includefield": "00080018", "limit": QIDO_PAGE, "offset": len(known)})
            if response is None or response.status_code != 200:
                return known
            try:
                page = response.json()
            except ValueError:
                return known
            before = len(known)
            known.update(uid for item in page for uid in _values(item, "00080018")[:1])
            truncated = "warning" in response.headers or len(page) >= QIDO_PAGE
            if len(known) == before or not truncated:
                return known

    async def upload_batch(self, files: list[DicomFile], known: set[str], attempt: int = 0) -> None:
        """Send ``files`` in one request; instances the server could not store for now (0xA700: a
        back end away while the rest of the request was stored) are sent again after a back-off."""
        size = sum(f.size for f in files)
        try:
            response, sent = await self._send("POST", "/studies", files)
        except (OSError, FileChanged) as exc:
            self.tally.fail(files, f"file could not be read: {exc}")
            self._advance(len(files))
            return
        if response is not None and response.status_code == 413 and len(files) > 1:
            self._advance(size=-sent)  # too big for the server: halve the request and try again
            half = len(files) // 2
            await self.upload_batch(files[:half], known)
            await self.upload_batch(files[half:], known)
            return
        self._advance(len(files), size - sent)
        again = self._record(files, response, known, retry=attempt < self.args.retries)
        if again:
            self._advance(-len(again), -sum(f.size for f in again))
            await asyncio.sleep(backoff(attempt))
            await self.upload_batch(again, known, attempt + 1)

    def _record(self, files: list[DicomFile], response: httpx.Response | None, known: set[str],
                *, retry: bool = False) -> list[DicomFile]:
        """Tally the response; the files worth sending again (when ``retry``)."""
        if response is None:
            self.tally.fail(files, UNREACHABLE)
            return []
        if response.status_code not in (200, 202, 409):
            self.tally.fail(files, _http_failure(response))
            return []
        try:
            result = parse_stow_response(response.json())
        except (ValueError, AttributeError):
            self.tally.fail(files, f"HTTP {response.status_code} with a body that is not DICOM JSON")
            return []
        return self._count(files, result, known, retry=retry)

    def _count(self, files: list[DicomFile], result: StowResult, known: set[str],
               *, retry: bool = False) -> list[DicomFile]:
        remaining = list(files)
        again: list[DicomFile] = []

        def take(uid: str | None) -> DicomFile | None:
            match = next((f for f in remaining if f.sop_instance_uid == uid), None)
            if match is not None:
                remaining.remove(match)
            return match

        for uid in result.referenced:
            take(uid)
            if uid is not None and uid in known:
                self.tally.present += 1
            else:
                self.tally.stored += 1
        self.tally.warnings += result.warned
        named = [(take(uid), uid, code) for uid, code in result.failed if uid]
        # a part the server could not parse comes back without UIDs: match those to the files left
        # over, in request order (the order the server lists its failures in)
        anonymous = [(remaining.pop(0) if remaining else None, None, code)
                     for uid, code in result.failed if not uid]
        for match, uid, code in named + anonymous:
            if retry and match is not None and code == RETRYABLE_FAILURE:
                again.append(match)
                continue
            path = match.path if match else Path(f"<instance {uid or 'without a SOP Instance UID'}>")
            self.tally.fail([path], describe_failure(code))
        silent = len(files) - len(result.referenced) - len(result.failed)
        if silent > 0:
            self.tally.fail(remaining[:silent], "not mentioned in the server's response")
        return again

    async def upload_study(self, study: str | None, files: list[DicomFile], limit: asyncio.Semaphore) -> None:
        async with limit:
            known = await self.existing(study) if study else set()
            if self.args.skip_existing:
                held = [f for f in files if f.sop_instance_uid in known]
                self.tally.present += len(held)
                self._advance(len(held), sum(f.size for f in held))
                files = [f for f in files if f.sop_instance_uid not in known]
            for batch in split(files, int(self.args.batch_mb * 1024 * 1024)):
                await self.upload_batch(batch, known)

    async def upload(self, files: list[DicomFile]) -> None:
        limit = asyncio.Semaphore(self.args.concurrency)
        await asyncio.gather(*(self.upload_study(study, group, limit)
                               for study, group in by_study(files).items()))


async def _upload(args: argparse.Namespace, files: list[DicomFile], prog: str) -> Tally:
    with StatusLine("upload", enabled=not args.quiet) as progress:
        progress.update(total=len(files), bytes_total=sum(f.size for f in files))
        async with Uploader(args, progress, prog) as uploader:
            await uploader.upload(files)
    return uploader.tally


def summary(tally: Tally, scan: Scan, seconds: float) -> str:
    megabytes = sum(f.size for f in scan.files) / 1e6
    lines = [f"stored {tally.stored}, already present {tally.present}, failed {tally.failed_total}"
             f" ({len(scan.files)} DICOM file(s), {megabytes:.1f} MB in {seconds:.1f} s;"
             f" {scan.skipped} non-DICOM file(s) skipped)"]
    if tally.warnings:
        lines.append(f"  {tally.warnings} instance(s) stored with a warning")
    lines += [f"  failed: {count} x {reason}" for reason, count in sorted(tally.failed.items())]
    lines += [f"    {path}: {reason}" for path, reason in tally.failures[:20]]
    if len(tally.failures) > 20:
        lines.append(f"    ... and {len(tally.failures) - 20} more")
    return "\n".join(lines)


def run(args: argparse.Namespace, prog: str = "dicomgw-client") -> int:
    """Upload as ``args`` say (``add_upload_arguments`` and ``--url``/``--token``); the exit status: 1
    when an instance failed, 2 when a path does not exist."""
    missing = [p for p in args.paths if not p.exists()]
    if missing:
        print(f"{prog} upload: no such file or folder: {', '.join(map(str, missing))}")
        return 2
    started = time.monotonic()
    scan = find_files(args.paths)
    tally = asyncio.run(_upload(args, scan.files, prog))
    for path, reason in scan.unreadable:
        tally.fail([path], f"file could not be read: {reason}")
    print(summary(tally, scan, time.monotonic() - started))
    return 1 if tally.failed_total else 0
