"""`dicomgw upload` against a real gateway: summary, exit codes, re-runs, retries through a flaky proxy."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pydicom
import pytest

from tests.dicomdata import make_instance, make_study, uid
from tests.fixtures.gateway import Gateway, free_port

DICOMGW = str(Path(sys.executable).parent / "dicomgw")


def upload(url: str | None, *paths: Path, extra: tuple[str, ...] = (),
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    args = [DICOMGW, "upload", *map(str, paths), "--quiet", *extra]
    if url is not None:
        args += ["--url", url]
    return subprocess.run(args, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def write_folder(folder: Path, parts: list[bytes]) -> Path:
    (folder / "nested" / "deeper").mkdir(parents=True)
    for i, data in enumerate(parts):
        sub = folder / "nested" / ("deeper" if i % 2 else "")
        (sub / f"img{i}").write_bytes(data)  # no .dcm suffix: found by the DICM prefix
    return folder


def uids(data: bytes) -> tuple[str, str, str]:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def stored_sops(gw: Gateway, study: str) -> set[str]:
    response = httpx.get(f"{gw.url}/studies/{study}/instances")
    assert response.status_code == 200, response.text
    return {item["00080018"]["Value"][0] for item in response.json()}


def object_files(gw: Gateway) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (gw.data_dir / "objects").rglob("*") if p.is_file()}


def summary(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout.splitlines()[0] if done.stdout else done.stderr


def test_folder_is_stored_and_bad_files_are_reported(gateway: Gateway, tmp_path: Path) -> None:
    study_a, study_b = make_study(2, 3), make_study(1, 2)
    damaged = make_instance()[:-3000]  # header intact, pixel data cut short: archived, with a warning
    broken = make_instance()[:400]  # cut inside its header: cannot be identified
    folder = write_folder(tmp_path / "in", [*study_a, *study_b, damaged, broken])
    (folder / "notes.txt").write_text("not DICOM")
    (folder / "nested" / "tiny").write_bytes(b"DICM")

    done = upload(gateway.url, folder)

    assert done.returncode == 1, done.stdout + done.stderr
    assert summary(done).startswith("stored 9, already present 0, failed 1 (10 DICOM file(s)")
    assert "2 non-DICOM file(s) skipped" in summary(done)
    assert "1 instance(s) stored with a warning" in done.stdout
    assert "failed: 1 x cannot understand (0xC000)" in done.stdout
    assert "img9: cannot understand (0xC000)" in done.stdout  # the file is named
    for parts in (study_a, study_b):
        assert stored_sops(gateway, uids(parts[0])[0]) == {uids(p)[2] for p in parts}
    study, series, sop = uids(study_a[4])
    original = httpx.get(f"{gateway.url}/studies/{study}/series/{series}/instances/{sop}",
                         headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert original.content == study_a[4]


def test_a_second_run_reports_already_present_and_stores_nothing_new(
        gateway: Gateway, tmp_path: Path) -> None:
    parts = make_study(2, 2)
    folder = write_folder(tmp_path / "in", parts)
    first = upload(gateway.url, folder)
    assert first.returncode == 0, first.stdout + first.stderr
    assert summary(first).startswith("stored 4, already present 0, failed 0")
    before = object_files(gateway)

    again = upload(gateway.url, folder)
    assert again.returncode == 0, again.stdout + again.stderr
    assert summary(again).startswith("stored 0, already present 4, failed 0")
    skipping = upload(gateway.url, folder, extra=("--skip-existing",))
    assert summary(skipping).startswith("stored 0, already present 4, failed 0")
    assert object_files(gateway) == before  # no new copy, nothing rewritten
    assert stored_sops(gateway, uids(parts[0])[0]) == {uids(p)[2] for p in parts}


def test_changed_file_with_a_stored_uid_fails_and_keeps_the_original(
        gateway: Gateway, tmp_path: Path) -> None:
    study, series, sop = uid(), uid(), uid()
    first = make_instance(study_uid=study, series_uid=series, sop_uid=sop, seed=1)
    changed = make_instance(study_uid=study, series_uid=series, sop_uid=sop, seed=2)
    (tmp_path / "one.dcm").write_bytes(first)
    (tmp_path / "two.dcm").write_bytes(changed)
    assert upload(gateway.url, tmp_path / "one.dcm").returncode == 0

    done = upload(gateway.url, tmp_path / "two.dcm")

    assert done.returncode == 1
    assert summary(done).startswith("stored 0, already present 0, failed 1")
    assert "two.dcm: duplicate SOP Instance UID with different content (0x0111)" in done.stdout
    kept = httpx.get(f"{gateway.url}/studies/{study}/series/{series}/instances/{sop}",
                     headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert kept.content == first


def test_url_from_the_environment_and_http_errors_reported(gateway: Gateway, tmp_path: Path) -> None:
    (tmp_path / "a.dcm").write_bytes(make_instance())
    wrong = upload(None, tmp_path, env={"DICOMGW_URL": gateway.root + "/not-dicomweb"})
    assert wrong.returncode == 1
    assert "failed: 1 x HTTP 404 Not Found" in wrong.stdout
    right = upload(None, tmp_path, env={"DICOMGW_URL": gateway.url})
    assert right.returncode == 0, right.stdout + right.stderr


def test_missing_path_and_unreachable_server_exit_non_zero(tmp_path: Path) -> None:
    missing = upload("http://127.0.0.1:9/dicom-web", tmp_path / "nowhere")
    assert missing.returncode == 2
    assert "no such file or folder" in missing.stdout
    (tmp_path / "a.dcm").write_bytes(make_instance())
    started = time.monotonic()
    down = upload(f"http://127.0.0.1:{free_port()}/dicom-web", tmp_path, extra=("--retries", "1"))
    assert down.returncode == 1
    assert "failed: 1 x server unreachable" in down.stdout
    assert time.monotonic() - started < 20


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body_bytes: int
    at: float
    answer: str


class FlakyProxy:
    """An HTTP proxy in front of the gateway that fails POSTs as scripted, then forwards faithfully.

    `faults` is consumed one entry per POST: "drop" reads half the body and resets the connection,
    "503" reads the whole request and answers 503 with Retry-After. Every request is recorded.
    """

    def __init__(self, target_port: int, faults: list[str], retry_after: int = 1) -> None:
        self.target_port = target_port
        self.faults = list(faults)
        self.retry_after = retry_after
        self.seen: list[Seen] = []
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def posts(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST"]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        request_line, *lines = head.decode("latin-1").split("\r\n")
        method, path, _ = request_line.split(" ", 2)
        fields = (line.partition(":") for line in lines if line)
        headers = {name.strip().lower(): value.strip() for name, _, value in fields}
        length = int(headers.get("content-length", "0"))
        fault = self.faults.pop(0) if method == "POST" and self.faults else "forward"
        self.seen.append(Seen(method, path, headers, length, time.monotonic(), fault))
        if fault == "drop":
            await reader.readexactly(length // 2)
            writer.transport.abort()  # connection reset in the middle of the body
            return
        body = await reader.readexactly(length)
        if fault == "503":
            writer.write(f"HTTP/1.1 503 Service Unavailable\r\nRetry-After: {self.retry_after}\r\n"
                         "Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
        else:
            writer.write(await self._forward(method, path, headers, body))
        await writer.drain()
        writer.close()

    async def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        headers = {**headers, "connection": "close"}
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        up_writer.write(head.encode("latin-1") + b"\r\n" + body)
        await up_writer.drain()
        response = await up_reader.read()  # the gateway closes after one response (Connection: close)
        up_writer.close()
        return response

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self.ready.set()
        self.loop.run_forever()
        server.close()

    def __enter__(self) -> FlakyProxy:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def proxy(gateway: Gateway, faults: list[str]) -> FlakyProxy:
    return FlakyProxy(int(gateway.root.rsplit(":", 1)[1]), faults)


@pytest.fixture
def flaky(gateway: Gateway) -> Iterator[FlakyProxy]:
    with proxy(gateway, ["drop", "503"]) as p:
        yield p


def test_dropped_connection_and_503_are_retried_honouring_retry_after(
        gateway: Gateway, flaky: FlakyProxy, tmp_path: Path) -> None:
    parts = make_study(1, 4)
    folder = write_folder(tmp_path / "in", parts)
    before = len(object_files(gateway))

    done = upload(flaky.url, folder)

    assert done.returncode == 0, done.stdout + done.stderr
    assert summary(done).startswith("stored 4, already present 0, failed 0")
    posts = flaky.posts()
    assert [p.answer for p in posts] == ["drop", "503", "forward"]
    assert posts[2].at - posts[1].at >= 0.95 * flaky.retry_after  # Retry-After was honoured
    assert posts[0].body_bytes == posts[2].body_bytes  # the same request, sent again whole
    assert stored_sops(gateway, uids(parts[0])[0]) == {uids(p)[2] for p in parts}
    assert len(object_files(gateway)) == before + 4  # one copy each, nothing from the dropped attempt


def test_studies_are_batched_and_credentials_are_sent(gateway: Gateway, tmp_path: Path) -> None:
    studies = [make_study(1, 5), make_study(1, 1)]
    folder = write_folder(tmp_path / "in", [p for s in studies for p in s])
    size = len(studies[0][0])
    with proxy(gateway, []) as p:
        done = upload(p.url, folder, extra=("--batch-mb", str(2.5 * size / 2**20), "--token", "t0k3n",
                                            "--header", "X-Site: lab-7", "--concurrency", "2"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert summary(done).startswith("stored 6, already present 0, failed 0")
    posts = p.posts()
    # 5 instances at most 2 a request: 3 requests; the other study: 1
    assert sorted(round(post.body_bytes / size) for post in posts) == [1, 1, 2, 2]
    for request in p.seen:
        assert request.headers["authorization"] == "Bearer t0k3n"
        assert request.headers["x-site"] == "lab-7"
    for post in posts:
        assert post.headers["content-type"].startswith('multipart/related; type="application/dicom"')
    gets = [s for s in p.seen if s.method == "GET"]
    assert len(gets) == 2  # one QIDO-RS look-up per study, not per batch


def test_request_too_large_for_the_server_is_split(make_gateway: Callable[..., Gateway],
                                                   tmp_path: Path) -> None:
    parts = make_study(1, 4, rows=256, columns=256)
    folder = write_folder(tmp_path / "in", parts)
    capped = make_gateway({"DICOMGW_HTTP_MAX_REQUEST_BYTES": str(int(len(parts[0]) * 2.5))})

    done = upload(capped.url, folder, extra=("--retries", "1"))

    assert done.returncode == 0, done.stdout + done.stderr
    assert summary(done).startswith("stored 4, already present 0, failed 0")
    assert stored_sops(capped, uids(parts[0])[0]) == {uids(p)[2] for p in parts}


def peak_rss(*args: str) -> tuple[int, bytes]:
    """Run a command, sampling its resident memory until it exits: (peak bytes, stdout)."""
    proc = psutil.Popen(list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak, deadline = 0, time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.01)  # a sampling interval, not a wait for work
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, out.decode()
    return peak, out


def test_upload_streams_from_disk_in_bounded_memory(gateway: Gateway, tmp_path: Path) -> None:
    small, big = tmp_path / "small", tmp_path / "big"
    small.mkdir()
    big.mkdir()
    (small / "one.dcm").write_bytes(make_instance())
    study = uid()
    for i in range(4):  # 4 x 16 MiB, all in one request
        (big / f"{i}.dcm").write_bytes(make_instance(study_uid=study, rows=1024, columns=1024,
                                                     frames=8, seed=i))
    total = sum(p.stat().st_size for p in big.iterdir())
    command = (DICOMGW, "upload", "--url", gateway.url, "--quiet", "--batch-mb", "1000")

    baseline, _ = peak_rss(*command, str(small))
    peak, out = peak_rss(*command, str(big))

    assert b"stored 4, already present 0, failed 0" in out
    growth = peak - baseline
    assert growth < 32 * 2**20, f"RSS grew {growth / 2**20:.0f} MiB while sending {total / 2**20:.0f} MiB"


def test_upload_with_an_api_key_to_a_gateway_requiring_credentials(
        make_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    """`dicomgw upload --token` (or DICOMGW_TOKEN) against a gateway with DICOMGW_AUTH_MODE=required:
    refused without a key (and nothing stored), stored with one."""
    gw = make_gateway({"DICOMGW_AUTH_MODE": "required"})
    env = {**os.environ, "DATA_DIR": str(gw.data_dir),
           "DICOMGW_INDEX_URL": f"sqlite+aiosqlite:///{gw.data_dir.resolve() / 'index.sqlite3'}"}
    made = subprocess.run([str(Path(sys.executable).parent / "dicomgw"), "keys", "create", "uploader",
                           "--scopes", "dicom.read,dicom.write"], capture_output=True, text=True, env=env,
                          timeout=60)
    key = made.stdout.strip().splitlines()[-1]
    parts = make_study(1, 3)
    for i, data in enumerate(parts):
        (tmp_path / f"{i}.dcm").write_bytes(data)
    refused = upload(gw.url, tmp_path)
    assert refused.returncode == 1 and "401" in refused.stdout, refused.stdout + refused.stderr
    study = pydicom.dcmread(io.BytesIO(parts[0]), stop_before_pixels=True).StudyInstanceUID
    auth = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{gw.url}/instances", params={"StudyInstanceUID": study}, headers=auth).json() == []
    stored = upload(gw.url, tmp_path, env={"DICOMGW_TOKEN": key})
    assert stored.returncode == 0, stored.stdout + stored.stderr
    assert len(httpx.get(f"{gw.url}/instances", params={"StudyInstanceUID": study}, headers=auth).json()) == 3
