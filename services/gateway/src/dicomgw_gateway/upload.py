"""`dicomgw upload`: send folders of DICOM files to a DICOMweb server by STOW-RS, study by study.

Files are found by their DICM prefix and grouped by study; studies go up concurrently in requests of at
most --batch-mb, streamed from disk. Transient failures (connection errors, 408/429/5xx) are retried
with backoff, honouring Retry-After. Instances the server already holds are skipped (a re-run resumes
where the last one stopped) unless --resend is given. Exit status 1 when anything failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pydicom
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

REASONS = {
    0xC000: "cannot understand",
    0x0122: "SOP class not supported",
    0xC122: "transfer syntax not supported",
    0xA900: "study does not match",
    0x0111: "duplicate SOP Instance UID with different content",
    0xA700: "out of resources",
    0x0110: "processing failure",
}
RETRY_STATUSES = {408, 429, 500, 502, 503, 504}
CHUNK = 1 << 20


@dataclass
class DicomFile:
    path: Path
    size: int
    study: str | None
    sop: str | None


@dataclass
class Tally:
    stored: int = 0
    present: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    skipped: int = 0

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("upload", help="send DICOM files and folders by STOW-RS")
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--url", default=os.environ.get("DICOMGW_URL", "http://127.0.0.1:8080/dicom-web"),
                        help="DICOMweb root (default: $DICOMGW_URL or http://127.0.0.1:8080/dicom-web)")
    parser.add_argument("--concurrency", type=int, default=4, help="studies sent at once")
    parser.add_argument("--batch-mb", type=float, default=64, help="largest STOW request, MB")
    parser.add_argument("--retries", type=int, default=5)
    parser.add_argument("--token", default=os.environ.get("DICOMGW_TOKEN"), help="bearer token")
    parser.add_argument("--header", action="append", default=[], help="extra 'Name: value' header")
    parser.add_argument("--resend", action="store_true",
                        help="send instances the server already holds (it checks they are identical)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def find_files(paths: Iterable[Path]) -> tuple[list[DicomFile], int]:
    """DICOM files under the paths (DICM at offset 128) and how many other files were skipped."""
    found, skipped = [], 0
    for root in paths:
        candidates = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in candidates:
            with path.open("rb") as f:
                head = f.read(132)
            if len(head) < 132 or head[128:132] != b"DICM":
                skipped += 1
                continue
            study = sop = None
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True,
                                     specific_tags=["StudyInstanceUID", "SOPInstanceUID"])
                study, sop = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
            except Exception:
                pass
            found.append(DicomFile(path, path.stat().st_size, study, sop))
    return found, skipped


def batches(files: list[DicomFile], batch_bytes: int) -> list[list[DicomFile]]:
    by_study: dict[str | None, list[DicomFile]] = defaultdict(list)
    for f in files:
        by_study[f.study].append(f)
    out = []
    for group in by_study.values():
        current: list[DicomFile] = []
        size = 0
        for f in group:
            if current and size + f.size > batch_bytes:
                out.append(current)
                current, size = [], 0
            current.append(f)
            size += f.size
        if current:
            out.append(current)
    return out


async def _body(files: list[DicomFile], boundary: str, on_bytes) -> AsyncIterator[bytes]:  # type: ignore[no-untyped-def]
    for f in files:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        with f.path.open("rb") as src:
            while chunk := src.read(CHUNK):
                on_bytes(len(chunk))
                yield chunk
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def _retry_after(resp: httpx.Response | None, attempt: int) -> float:
    if resp is not None:
        value = resp.headers.get("retry-after", "")
        if value.isdigit():
            return min(float(value), 60.0)
    return min(0.5 * 2**attempt, 30.0)


class Uploader:
    def __init__(self, args: argparse.Namespace, console: Console) -> None:
        self.args = args
        self.console = console
        self.tally = Tally()
        headers = {"Accept": "application/dicom+json"}
        if args.token:
            headers["Authorization"] = f"Bearer {args.token}"
        for item in args.header:
            name, _, value = item.partition(":")
            headers[name.strip()] = value.strip()
        self.client = httpx.AsyncClient(base_url=args.url.rstrip("/"), headers=headers,
                                        timeout=httpx.Timeout(300, connect=10))

    async def existing(self, study: str) -> set[str]:
        """SOP Instance UIDs the server already holds for a study (QIDO, paged)."""
        known: set[str] = set()
        offset = 0
        while True:
            resp = await self._request("GET", f"/studies/{study}/instances",
                                       params={"includefield": "00080018", "limit": 5000,
                                               "offset": offset})
            if resp is None or resp.status_code not in (200, 204):
                return known
            page = resp.json() if resp.status_code == 200 and resp.content else []
            known.update(item["00080018"]["Value"][0] for item in page if "00080018" in item)
            if len(page) < 5000:
                return known
            offset += len(page)

    async def _request(self, method: str, url: str, *, files: list[DicomFile] | None = None,
                       on_bytes=None, **kwargs) -> httpx.Response | None:  # type: ignore[no-untyped-def]
        last: httpx.Response | None = None
        for attempt in range(self.args.retries + 1):
            try:
                if files is not None:
                    boundary = "dicomgw-upload-" + secrets.token_hex(8)
                    kwargs["content"] = _body(files, boundary, on_bytes or (lambda n: None))
                    kwargs["headers"] = {
                        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
                    }
                last = await self.client.request(method, url, **kwargs)
                if last.status_code not in RETRY_STATUSES:
                    return last
            except httpx.TransportError:
                last = None
            if attempt < self.args.retries:
                await asyncio.sleep(_retry_after(last, attempt))
        return last

    def _record(self, files: list[DicomFile], resp: httpx.Response | None, known: set[str]) -> None:
        if resp is None:
            self.tally.failed["server unreachable"] += len(files)
            return
        if resp.status_code not in (200, 202, 409):
            self.tally.failed[f"HTTP {resp.status_code}"] += len(files)
            return
        body = resp.json()
        for item in body.get("00081199", {}).get("Value", []):
            uid = item.get("00081155", {}).get("Value", [None])[0]
            if uid in known:
                self.tally.present += 1
            else:
                self.tally.stored += 1
        for item in body.get("00081198", {}).get("Value", []):
            code = item.get("00081197", {}).get("Value", [0x0110])[0]
            self.tally.failed[f"{REASONS.get(code, 'failure')} (0x{code:04X})"] += 1

    async def send(self, batch: list[DicomFile], progress: Progress, task_id: int,
                   limit: asyncio.Semaphore) -> None:
        async with limit:
            study = batch[0].study
            known = await self.existing(study) if study else set()
            todo = batch if self.args.resend else [f for f in batch if f.sop not in known]
            skipped = len(batch) - len(todo)
            self.tally.present += skipped
            progress.update(task_id, advance=sum(f.size for f in batch if f not in todo))
            if not todo:
                return
            sent = 0

            def on_bytes(n: int) -> None:
                nonlocal sent
                sent += n
                progress.update(task_id, advance=n)

            resp = await self._request("POST", "/studies", files=todo, on_bytes=on_bytes)
            self._record(todo, resp, known)

    async def run(self, files: list[DicomFile]) -> None:
        limit = asyncio.Semaphore(max(1, self.args.concurrency))
        total = sum(f.size for f in files)
        columns = [TextColumn("[bold]uploading"), BarColumn(), TextColumn("{task.fields[n]} instances"),
                   TextColumn("{task.completed:,.0f}/{task.total:,.0f} B"), TransferSpeedColumn(),
                   TimeRemainingColumn()]
        with Progress(*columns, console=self.console, disable=self.args.quiet) as progress:
            task_id = progress.add_task("upload", total=total, n=len(files))
            await asyncio.gather(*(self.send(b, progress, task_id, limit)
                                   for b in batches(files, int(self.args.batch_mb * 1024 * 1024))))
        await self.client.aclose()


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=False, soft_wrap=True)
    started = time.monotonic()
    files, skipped = find_files(args.paths)
    uploader = Uploader(args, console)
    uploader.tally.skipped = skipped
    asyncio.run(uploader.run(files))
    tally = uploader.tally
    seconds = time.monotonic() - started
    megabytes = sum(f.size for f in files) / 1e6
    console.print(f"stored {tally.stored}, already present {tally.present}, failed {tally.failed_total}"
                  f" ({megabytes:.1f} MB in {seconds:.1f} s; {skipped} non-DICOM file(s) skipped)")
    for reason, count in sorted(tally.failed.items()):
        console.print(f"  failed: {count} x {reason}")
    return 1 if tally.failed_total else 0
