"""Hostile STOW-RS requests get a clear PS3.18 answer, quickly, and change nothing already stored.

Boundaries the parser cannot take (one of them answered 500), a content coding the gateway does not
decode, a sender that stops half-way, a client that hangs up: each is a 4xx with
application/problem+json, its spooled parts are removed, and the gateway keeps serving. A deflated
part that would inflate a thousand times is refused (0xC000) before it is inflated.
"""

from __future__ import annotations

import hashlib
import socket
import time
import zlib
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import pytest

from tests.dicomdata import make_dataset, make_instance, multipart_related, split_multipart
from tests.fixtures.gateway import Gateway
from tests.polling import wait_for

pytestmark = pytest.mark.timeout(300)
JSON = {"accept": "application/dicom+json"}
IDLE_SECONDS = 1


@pytest.fixture(scope="module")
def instance() -> bytes:
    return make_instance()


def _body(boundary: str, data: bytes) -> bytes:
    b = boundary.encode("latin-1")
    return b"--" + b + b"\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n--" + b + b"--\r\n"


def _raw(gw: Gateway, head: bytes, body: bytes = b"") -> socket.socket:
    url = urlsplit(gw.url)
    sock = socket.create_connection((url.hostname, url.port))
    sock.sendall(head + body)
    return sock


def _answer(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("boundary, status", [
    ("b" * 256, 200),  # beyond RFC 2046's 70, within what the parser takes: accepted
    ("b" * 257, 400),
    ("x" * 5000, 400),  # answered 500 before
    ("\\" * 3000, 400),
    ("tab\there", 400),
    ("ends with a space ", 400),
])
def test_boundaries(gateway: Gateway, instance: bytes, boundary: str, status: int) -> None:
    quoted = '"' + boundary.replace("\\", "\\\\") + '"'
    started = time.monotonic()
    r = httpx.post(f"{gateway.url}/studies", content=_body(boundary, instance), timeout=60, headers={
        "content-type": f'multipart/related; type="application/dicom"; boundary={quoted}', **JSON})
    assert r.status_code == status, r.text[:300]
    assert time.monotonic() - started < 10
    if status != 200:
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "boundary" in r.json()["detail"]


def test_a_content_coding_is_refused_with_415(gateway: Gateway, instance: bytes) -> None:
    body, content_type = multipart_related([instance])
    r = httpx.post(f"{gateway.url}/studies", content=body, timeout=60,
                   headers={"content-type": content_type, "content-encoding": "gzip", **JSON})
    assert r.status_code == 415 and "Content-Encoding" in r.json()["detail"]


def test_a_stalled_sender_gets_408_and_a_hang_up_leaves_nothing(
        make_gateway: Callable[..., Gateway], instance: bytes) -> None:
    gw = make_gateway({"DICOMGW_HTTP_BODY_IDLE_SECONDS": str(IDLE_SECONDS)})
    stored, content_type = multipart_related([instance])
    assert httpx.post(f"{gw.url}/studies", content=stored, timeout=60,
                      headers={"content-type": content_type, **JSON}).status_code == 200

    parts = [make_instance() for _ in range(3)]
    body, content_type = multipart_related(parts)
    head = (f"POST {urlsplit(gw.url).path}/studies HTTP/1.1\r\nHost: gateway\r\n"
            f"Content-Type: {content_type}\r\nAccept: application/dicom+json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    # two parts and a half, then silence
    stalled = _raw(gw, head, body[: len(body) * 5 // 6])
    started = time.monotonic()
    answer = _answer(stalled, timeout=30)
    stalled.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < IDLE_SECONDS + 10
    assert b"application/problem+json" in answer

    hung_up = _raw(gw, head, body[: len(body) // 2])
    time.sleep(0.3)
    hung_up.close()

    # meanwhile and afterwards: served, nothing acknowledged from the broken requests, no spool left
    wait_for(lambda: not any((gw.data_dir / "spool").iterdir()), 30)
    study = httpx.get(f"{gw.url}/studies", headers=JSON, timeout=30).json()
    assert len(study) == 1
    original = httpx.get(f"{gw.url}/studies/{study[0]['0020000D']['Value'][0]}", timeout=30,
                         headers={"accept": 'multipart/related; type="application/dicom"'})
    [(_, served)] = split_multipart(original.content, original.headers["content-type"])
    assert hashlib.sha256(served).digest() == hashlib.sha256(instance).digest()
    assert "unhandled error" not in gw.log.read_text()


def _deflate_bomb(zeros: int) -> bytes:
    """A valid deflated PS3.10 file with ``zeros`` bytes of a private OB value: a few KB per MB."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = make_dataset()
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta, body = DicomBytesIO(), DicomBytesIO()
    for fp in (meta, body):
        fp.is_little_endian, fp.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta)
    write_dataset(body, ds)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = b"\x09\x00\x10\x10OB\x00\x00" + zeros.to_bytes(4, "little")  # (0009,1010) OB
    stream = deflater.compress(body.getvalue() + head)
    block = bytes(1 << 20)
    for _ in range(zeros >> 20):
        stream += deflater.compress(block)
    return b"\x00" * 128 + b"DICM" + meta.getvalue() + stream + deflater.flush()


def test_a_deflate_bomb_is_refused_without_inflating_it(gateway: Gateway) -> None:
    bomb = _deflate_bomb(256 << 20)
    assert len(bomb) < 1 << 20
    body, content_type = multipart_related([bomb])
    started = time.monotonic()
    r = httpx.post(f"{gateway.url}/studies", content=body, timeout=120,
                   headers={"content-type": content_type, **JSON})
    assert r.status_code == 409, r.text[:300]
    [failed] = r.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xC000]
    assert time.monotonic() - started < 10  # inflating it all took 40 s and 6 GB
