"""The client's reads by presigned URL (dicomgw_client.api.Store, DirectURLs): an answer is the object
only when it is whole and 200; URLs are asked for again before they expire, never for an archive that
hands out none."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from dicomgw_client import api

OBJECT = bytes(range(256)) * 4000


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # connections kept alive
    peers: set[tuple[str, int]] = set()

    def do_GET(self) -> None:
        self.peers.add(self.client_address)
        if self.path in ("/object", "/object-then-drop"):
            self.send_response(200)
            self.send_header("Content-Length", str(len(OBJECT)))
            self.end_headers()
            self.wfile.write(OBJECT)
            # an idle kept-alive connection the store closes (its idle timeout), unannounced
            self.close_connection = self.path == "/object-then-drop"
        elif self.path == "/short":  # the connection drops before the length said is sent
            self.send_response(200)
            self.send_header("Content-Length", str(len(OBJECT)))
            self.end_headers()
            self.wfile.write(OBJECT[:1000])
            self.close_connection = True
        else:
            body = b"<Error><Code>SignatureDoesNotMatch</Code></Error>"
            self.send_response(403)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_a_store_read_is_the_object_only_when_whole(server: str) -> None:
    counted: list[int] = []
    store = api.Store(10.0, 4, lambda: counted.append(1))
    out = io.BytesIO()
    assert store.read_into(f"{server}/object", out) == (hashlib.sha256(OBJECT).hexdigest(), len(OBJECT))
    assert out.getvalue() == OBJECT
    assert store.get(f"{server}/object") == OBJECT
    assert store.read_into(f"{server}/short", io.BytesIO()) is None  # cut short: not the object
    assert store.read_into(f"{server}/expired", io.BytesIO()) is None  # 403
    assert store.get(f"{server}/expired") is None
    assert store.get("http://127.0.0.1:1/object") is None  # no connection
    assert len(counted) == 6
    # a caller gives up at a chunk by raising
    with pytest.raises(KeyboardInterrupt):
        store.read_into(f"{server}/object", io.BytesIO(), each_chunk=lambda: (_ for _ in ()).throw(
            KeyboardInterrupt()))
    assert store.get(f"{server}/object") == OBJECT  # and the connections still serve
    store.close()


def test_a_store_reuses_its_connections_and_replaces_one_the_store_closed(server: str) -> None:
    store = api.Store(10.0, 4, lambda: None)
    Handler.peers.clear()
    for _ in range(5):
        assert store.get(f"{server}/object") == OBJECT
    assert len(Handler.peers) == 1  # one connection, kept alive
    assert store.get(f"{server}/object-then-drop") == OBJECT
    # the kept connection is closed on the store's side: the next read opens another and is whole
    assert store.get(f"{server}/object") == OBJECT
    assert len(Handler.peers) == 2
    store.close()


class Archive:
    """What DirectURLs asks of an archive: its URLs and their validity."""

    def __init__(self, urls: dict[str, str], seconds: float) -> None:
        self.urls, self.seconds, self.asked = urls, seconds, 0

    def direct_urls(self, collection: str, version: int) -> tuple[dict[str, str], float]:
        self.asked += 1
        return {k: f"{v}?n={self.asked}" for k, v in self.urls.items()}, self.seconds


def test_urls_are_asked_for_again_before_they_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(api.time, "time", lambda: now[0])
    archive = Archive({"1.2.3": "http://store/a"}, 900)
    direct = api.DirectURLs(archive, "c", 1)  # type: ignore[arg-type]
    assert archive.asked == 0  # not before it is used
    assert direct.get("1.2.3") == "http://store/a?n=1" and direct.get("9.9") is None
    now[0] += 0.79 * 900
    assert direct.get("1.2.3") == "http://store/a?n=1" and archive.asked == 1
    now[0] += 0.02 * 900  # past 80 % of their validity
    assert direct.get("1.2.3") == "http://store/a?n=2" and archive.asked == 2
    # an archive that hands out none is asked once
    none = Archive({}, 0)
    nothing = api.DirectURLs(none, "c", 1)  # type: ignore[arg-type]
    now[0] += 10 ** 6
    assert nothing.get("1.2.3") is None and nothing.get("1.2.3") is None and none.asked == 1
