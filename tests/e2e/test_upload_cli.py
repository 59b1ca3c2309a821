"""`dicomgw upload` against a real gateway: summary, exit codes, resumption, retries through a flaky link."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.dicomdata import make_instance, make_study
from tests.fixtures.gateway import Gateway, free_port

DICOMGW = str(Path(sys.executable).parent / "dicomgw")


def upload(url: str, *paths: Path, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DICOMGW, "upload", *map(str, paths), "--url", url, "--quiet", *extra],
                          capture_output=True, text=True, timeout=300)


def _folder(tmp_path: Path, parts: list[bytes]) -> Path:
    folder = tmp_path / "incoming"
    (folder / "nested").mkdir(parents=True)
    for i, data in enumerate(parts):
        (folder / "nested" / f"img{i}").write_bytes(data)  # no .dcm suffix: found by DICM prefix
    return folder


def _count_instances(gw: Gateway, study: str) -> int:
    found = httpx.get(f"{gw.url}/studies/{study}/instances").json()
    return len(found)


def test_upload_stores_a_folder_and_reports_a_summary(gateway: Gateway, tmp_path: Path) -> None:
    import io

    import pydicom

    parts = make_study(2, 3)
    folder = _folder(tmp_path, parts)
    (folder / "notes.txt").write_text("not DICOM")
    done = upload(gateway.url, folder)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stored 6, already present 0, failed 0" in done.stdout
    assert "1 non-DICOM file(s) skipped" in done.stdout
    study = str(pydicom.dcmread(io.BytesIO(parts[0])).StudyInstanceUID)
    assert _count_instances(gateway, study) == 6

    before = sorted((gateway.data_dir / "objects").rglob("*.dcm"))
    again = upload(gateway.url, folder)
    assert again.returncode == 0
    assert "stored 0, already present 6, failed 0" in again.stdout
    assert sorted((gateway.data_dir / "objects").rglob("*.dcm")) == before
    resent = upload(gateway.url, folder, extra=("--resend",))
    assert "stored 0, already present 6, failed 0" in resent.stdout


def test_failures_are_reported_with_reasons_and_exit_non_zero(gateway: Gateway, tmp_path: Path) -> None:
    good = make_instance()
    broken = make_instance()[:-3000]
    folder = _folder(tmp_path, [good, broken])
    done = upload(gateway.url, folder)
    assert done.returncode == 1
    assert "stored 1, already present 0, failed 1" in done.stdout
    assert "cannot understand (0xC000)" in done.stdout


def test_unreachable_server_fails_cleanly(tmp_path: Path) -> None:
    folder = _folder(tmp_path, [make_instance()])
    done = upload(f"http://127.0.0.1:{free_port()}/dicom-web", folder, extra=("--retries", "1"))
    assert done.returncode == 1
    assert "server unreachable" in done.stdout


class FlakyProxy:
    """A TCP proxy to the gateway that drops its first connections, then forwards faithfully."""

    def __init__(self, target_port: int, drop_first: int) -> None:
        self.target_port = target_port
        self.drops_left = drop_first
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.drops_left > 0:
            self.drops_left -= 1
            await reader.read(1024)
            writer.close()  # the client sees the connection die mid-request
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self.ready.set()
        self.loop.run_forever()
        server.close()

    def __enter__(self) -> FlakyProxy:
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def flaky(gateway: Gateway) -> Iterator[FlakyProxy]:
    port = int(gateway.root.rsplit(":", 1)[1])
    with FlakyProxy(port, drop_first=3) as proxy:
        yield proxy


def test_transient_connection_failures_are_retried(gateway: Gateway, flaky: FlakyProxy,
                                                   tmp_path: Path) -> None:
    parts = make_study(1, 4)
    folder = _folder(tmp_path, parts)
    done = upload(f"http://127.0.0.1:{flaky.port}/dicom-web", folder)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stored 4, already present 0, failed 0" in done.stdout
    assert flaky.drops_left == 0
