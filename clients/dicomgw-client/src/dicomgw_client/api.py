"""The archive's HTTP API as a collection reader or a pull uses it: versions, version files, metadata,
instances.

``url`` is the gateway's DICOMweb root (``http://127.0.0.1:8080/dicom-web``); a collection's instances
are DICOMweb under ``{url}/partitions/{collection}`` and its versions' files at
``{origin}/collections/{collection}/versions/...`` (``origin``: the scheme and host of ``url``), as
``dicomgw share`` uses them. The credential, a bearer token or an API key, goes in
``Authorization: Bearer ...``.

The HTTP client is opened on first use in each process and never pickled: an ``Archive`` handed to a
DataLoader worker (fork or spawn) opens its own connections there.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import math
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, Any
from urllib.parse import quote, urlsplit

import httpx

from dicomgw_client.errors import ArchiveError, ArchiveUnreachable

# the object as stored: its bytes are what the manifest's SHA-256 is of
INSTANCE_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
# A series with at least this many objects to fetch is fetched with one request (WADO-RS of the series,
# its instances as stored, in parts) instead of one request per instance: the archive's cost per request
# (credential, index, object store) then no longer bounds the throughput. Below it, the concurrent
# requests per instance are as fast, and fetch only what is wanted.
SERIES_REQUEST_MIN = 32
# presigned URLs asked for at once (the archive signs them without a request to its store)
DIRECT_PAGE = 5000
# presigned URLs are asked for again once this fraction of their validity has passed
DIRECT_RENEW = 0.8
# an object from the store is read (and hashed, and written) this many bytes at a time
STORE_CHUNK = 1 << 20


_ssl_lock = threading.Lock()
_ssl_contexts: dict[int, ssl.SSLContext] = {}


def _after_fork() -> None:
    global _ssl_lock
    _ssl_lock = threading.Lock()  # a parent's thread may have held it when the process forked


os.register_at_fork(after_in_child=_after_fork)


def ssl_context() -> ssl.SSLContext:
    """httpx's default verifying context, made once per process and shared by its clients: making one
    reads the CA bundle, tens of milliseconds each time a dataset or a pull opens a client."""
    pid = os.getpid()
    with _ssl_lock:
        if pid not in _ssl_contexts:
            _ssl_contexts.clear()
            _ssl_contexts[pid] = httpx.create_ssl_context()
        return _ssl_contexts[pid]


def problem_text(response: httpx.Response) -> str:
    """A refusal in one line: the status and the problem's detail (``application/problem+json``)."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:300]}"
    if isinstance(body, dict):
        return f"HTTP {response.status_code}: {body.get('detail') or body.get('title') or body}"
    return f"HTTP {response.status_code}"


def retry_delay(attempt: int) -> float:
    """Seconds to wait before retry ``attempt + 1`` (exponential, at most 8 s)."""
    return min(8.0, 0.25 * 2.0 ** attempt)


def boundary_of(content_type: str) -> str | None:
    """The boundary of a multipart/related Content-Type; None for any other media type."""
    media, _, parameters = content_type.partition(";")
    if media.strip().lower() != "multipart/related":
        return None
    for parameter in parameters.split(";"):
        name, _, value = parameter.strip().partition("=")
        if name.strip().lower() == "boundary":
            return value.strip().strip('"') or None
    return None


class MultipartSplitter:
    """A multipart body fed in chunks as it arrives, split into its parts' bytes without holding more
    than a chunk and a delimiter: ``feed`` gives ``("begin", None)``, ``("data", bytes)`` (in order, any
    number) and ``("end", None)`` for each part; ``complete`` says whether the closing delimiter came."""

    def __init__(self, boundary: str) -> None:
        self._delimiter = b"\r\n--" + boundary.encode("latin-1")
        self._buffer = bytearray(b"\r\n")  # the first delimiter has no line break before it
        self._state = "preamble"  # preamble | delimited | headers | body | done
        self.complete = False

    def feed(self, chunk: bytes) -> Iterator[tuple[str, bytes | None]]:
        buffer, delimiter = self._buffer, self._delimiter
        buffer += chunk
        while True:
            if self._state in ("preamble", "body"):
                at = buffer.find(delimiter)
                if at < 0:
                    keep = len(delimiter) - 1  # a delimiter may begin at the end of this chunk
                    if self._state == "body" and len(buffer) > keep:
                        yield "data", bytes(buffer[:-keep])
                    if len(buffer) > keep:
                        del buffer[:-keep]
                    return
                if self._state == "body":
                    if at:
                        yield "data", bytes(buffer[:at])
                    yield "end", None
                del buffer[:at + len(delimiter)]
                self._state = "delimited"
            if self._state == "delimited":
                if len(buffer) < 2:
                    return
                if buffer[:2] == b"--":
                    self._state, self.complete = "done", True
                    return
                self._state = "headers"
            if self._state == "headers":
                # the rest of the delimiter's line (transport padding), the part's headers, a blank line
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > 1 << 16:
                        raise ArchiveError("a multipart answer with a part's headers longer than 64 KiB")
                    return
                del buffer[:end + 4]
                self._state = "body"
                yield "begin", None
            if self._state == "done":
                buffer.clear()
                return


def single_part(response: httpx.Response) -> bytes:
    """The payload of a multipart/related answer of one part (or the body of a single-part one)."""
    media, _, parameters = response.headers.get("content-type", "").partition(";")
    if media.strip().lower() != "multipart/related":
        return response.content
    boundary = ""
    for parameter in parameters.split(";"):
        name, _, value = parameter.strip().partition("=")
        if name.strip().lower() == "boundary":
            boundary = value.strip().strip('"')
    if not boundary:
        raise ArchiveError("a multipart answer without a boundary")
    body = response.content
    delimiter = b"--" + boundary.encode("latin-1")
    start = body.find(delimiter)
    if start < 0:
        raise ArchiveError("a multipart answer without its first boundary")
    headers_end = body.find(b"\r\n\r\n", start)
    end = body.find(b"\r\n" + delimiter, headers_end)
    if headers_end < 0 or end < 0:
        raise ArchiveError("a multipart answer cut short")
    if not body.startswith(delimiter + b"--", end + 2):
        raise ArchiveError("a multipart answer of several parts where one was asked for")
    return body[headers_end + 4:end]


class Store:
    """The archive's object store, read by presigned URLs: the URL is the credential, so no header of
    the archive's ever goes there. The standard library's ``http.client`` on kept-alive connections,
    not httpx: an object read of 0.5 MB costs the client about a sixth of httpx's CPU and two thirds of
    urllib3's (measured here: 600 CT objects with 8 threads, medians of 10 interleaved rounds, 0.21
    against 0.30 CPU-s with urllib3), which a pull of thousands of small files or a first epoch spends
    per object. Only a whole answer (200, with all of its Content-Length) is an object; anything else
    is None, and the caller reads it with WADO-RS instead (no retries here, but a kept-alive connection
    the store has closed meanwhile is replaced once)."""

    def __init__(self, timeout: float, connections: int, counted: Callable[[], None]) -> None:
        self.timeout, self.connections, self.counted = timeout, connections, counted
        self._idle: dict[tuple[str, str, int], list[http.client.HTTPConnection]] = {}
        self._pid = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_idle={}, _pid=0, _lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _connection(self, origin: tuple[str, str, int]) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection to ``origin`` of this process (a fork's child never uses its parent's), or
        a new one; and whether it was used before."""
        pid = os.getpid()
        if self._pid != pid:
            self._lock = threading.Lock()
            self._idle, self._pid = {}, pid
        with self._lock:
            idle = self._idle.get(origin)
            if idle:
                return idle.pop(), True
        scheme, host, port = origin
        if scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=self.timeout, context=ssl_context()), False
        return http.client.HTTPConnection(host, port, timeout=self.timeout), False

    def _keep(self, origin: tuple[str, str, int], connection: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(origin, [])
            if len(idle) < self.connections:
                idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        if self._pid == os.getpid():
            with self._lock:
                for idle in self._idle.values():
                    for connection in idle:
                        connection.close()
        self._idle = {}

    @contextlib.contextmanager
    def _answer(self, url: str) -> Iterator[http.client.HTTPResponse | None]:
        """The store's answer to a GET of ``url`` (None: no connection, or none that answered); its
        connection is kept for the next read when the caller has read the whole body of a 200."""
        self.counted()
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        origin = (scheme, parts.hostname or "", parts.port or (443 if scheme == "https" else 80))
        target = f"{parts.path or '/'}?{parts.query}" if parts.query else (parts.path or "/")
        answer: http.client.HTTPResponse | None = None
        connection: http.client.HTTPConnection | None = None
        for _ in range(2):
            connection, reused = self._connection(origin)
            try:
                connection.request("GET", target)
                answer = connection.getresponse()
                break
            except (OSError, http.client.HTTPException):
                connection.close()
                connection, answer = None, None
                if not reused:
                    break  # a new connection failed: the store is out of reach
        try:
            yield answer
        finally:
            if connection is not None:
                if (answer is not None and answer.status == 200 and answer.isclosed()
                        and not answer.will_close):
                    self._keep(origin, connection)
                else:
                    connection.close()

    def read_into(self, url: str, out: IO[bytes], each_chunk: Callable[[], None] | None = None,
                  ) -> tuple[str, int] | None:
        """The object at ``url`` streamed into ``out`` and hashed: (SHA-256 in hex, size); None when the
        store did not give it (an error status, no connection, an answer cut short). ``each_chunk`` is
        called before each chunk is written (it may raise to give up)."""
        with self._answer(url) as answer:
            if answer is None or answer.status != 200:
                return None
            digest, size = hashlib.sha256(), 0
            try:
                while chunk := answer.read(STORE_CHUNK):
                    if each_chunk is not None:
                        each_chunk()
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
            except (OSError, http.client.HTTPException):
                return None
            length = answer.getheader("content-length")
            if length is not None and int(length) != size:
                return None
            return digest.hexdigest(), size

    def get(self, url: str) -> bytes | None:
        """The object at ``url``, or None when the store did not give it."""
        with self._answer(url) as answer:
            if answer is None or answer.status != 200:
                return None
            try:
                # with a Content-Length, read whole or IncompleteRead (an HTTPException)
                return answer.read()
            except (OSError, http.client.HTTPException):
                return None


class DirectURLs:
    """The presigned URLs of a version's objects (``Archive.direct_urls``), asked for on first use and
    again when most of their validity has passed: a pull or an epoch longer than it keeps reading from
    the store. An archive that hands out none is not asked again."""

    def __init__(self, archive: Archive, collection: str, version: int) -> None:
        self.archive, self.collection, self.version = archive, collection, version
        self._urls: dict[str, str] = {}
        self._until = 0.0  # time.time() when they are asked for again
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def get(self, sop_instance_uid: str) -> str | None:
        with self._lock:
            self._renew_when_due()
            return self._urls.get(sop_instance_uid)

    def refresh(self) -> None:
        """The URLs asked for now when they are due (before the first ``get`` needs them)."""
        with self._lock:
            self._renew_when_due()

    def _renew_when_due(self) -> None:
        if time.time() >= self._until:
            self._urls, seconds = self.archive.direct_urls(self.collection, self.version)
            self._until = time.time() + DIRECT_RENEW * seconds if self._urls else math.inf


class Archive:
    """One gateway with the caller's credential; counts the requests it sends (``requests``)."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 120.0, retries: int = 4,
                 connections: int = 8) -> None:
        self.root = url.rstrip("/")
        parts = urlsplit(self.root)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an http(s) DICOMweb root: {url!r}")
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.token, self.timeout, self.retries, self.connections = token, timeout, retries, connections
        self.requests = 0  # sent by this object in this process
        self._client: httpx.Client | None = None
        self._pid = 0
        self._lock = threading.Lock()
        # the object store by presigned URLs, when the archive hands them out
        self.store = Store(timeout, connections, self._counted)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_client=None, _pid=0, _lock=None, requests=0)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def client(self) -> httpx.Client:
        """This process's client: a fork's child never uses its parent's connections."""
        pid = os.getpid()
        if self._client is None or self._pid != pid:
            if self._pid != pid:
                self._lock = threading.Lock()
                self._client = None  # the parent's: left alone, its sockets are the parent's
            with self._lock:
                if self._client is None:
                    headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
                    self._client = httpx.Client(
                        headers=headers, timeout=self.timeout, follow_redirects=True, verify=ssl_context(),
                        limits=httpx.Limits(max_connections=self.connections),
                        event_hooks={"request": [self._count]})
                    self._pid = pid
        return self._client

    def direct_urls(self, collection: str, version: int) -> tuple[dict[str, str], float]:
        """SOP Instance UID -> a presigned URL of its object in the archive's store, for the instances
        the archive can hand out so (verbatim, in its hot store), and the seconds they stay valid; empty
        when it hands out none (no public endpoint of its store configured, or an older archive): then
        every read is WADO-RS."""
        out: dict[str, str] = {}
        offset = 0
        base = f"{self.origin}/collections/{quote(collection, safe='')}/versions/{version}/objects"
        expires_in = 0.0
        while True:
            try:
                page = self.get(f"{base}?offset={offset}&limit={DIRECT_PAGE}", "application/json").json()
            except ArchiveError:
                return {}, 0.0
            if offset == 0:
                expires_in = float(page.get("expiresIn") or 0)
            out.update({o["sop_instance_uid"]: o["url"] for o in page["objects"] if o.get("url")})
            offset += len(page["objects"])
            if not page["objects"] or offset >= int(page["total"]):
                return out, expires_in

    def _count(self, request: httpx.Request) -> None:
        self._counted()

    def _counted(self) -> None:
        with self._lock:
            self.requests += 1

    def close(self) -> None:
        if self._client is not None and self._pid == os.getpid():
            self._client.close()
        self._client = None
        self.store.close()

    def get(self, url: str, accept: str) -> httpx.Response:
        """GET with retries on connection errors, 429 and 5xx (exponential back-off); ArchiveError on a
        refusal, ArchiveUnreachable when no answer came."""
        response = None
        for attempt in range(self.retries + 1):
            try:
                response = self.client.get(url, headers={"Accept": accept})
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise ArchiveUnreachable(f"{url}: {type(exc).__name__}: {exc}") from exc
            else:
                if response.status_code not in RETRY_STATUS or attempt == self.retries:
                    break
            time.sleep(retry_delay(attempt))
        assert response is not None
        if response.status_code >= 400:
            raise ArchiveError(f"{url}: {problem_text(response)}")
        return response

    # ---- what a collection reader needs ----------------------------------------------------------
    def dicomweb(self, collection: str) -> str:
        return f"{self.root}/partitions/{quote(collection, safe='')}"

    def versions(self, collection: str) -> list[dict[str, Any]]:
        """The collection's complete versions, oldest first."""
        url = f"{self.origin}/collections/{quote(collection, safe='')}/versions"
        versions: list[dict[str, Any]] = self.get(url, "application/json").json()["versions"]
        return versions

    def version_file_url(self, collection: str, version: int, filename: str) -> str:
        return f"{self.origin}/collections/{quote(collection, safe='')}/versions/{version}/{filename}"

    def version_file(self, collection: str, version: int, filename: str) -> bytes:
        return self.get(self.version_file_url(collection, version, filename), "*/*").content

    def instance_url(self, collection: str, study_instance_uid: str, series_instance_uid: str,
                     sop_instance_uid: str) -> str:
        return (f"{self.dicomweb(collection)}/studies/{study_instance_uid}/series/{series_instance_uid}"
                f"/instances/{sop_instance_uid}")

    def study_metadata(self, collection: str, study_instance_uid: str) -> list[dict[str, Any]]:
        """DICOM JSON of every instance of the study in the collection's partition."""
        url = f"{self.dicomweb(collection)}/studies/{study_instance_uid}/metadata"
        metadata: list[dict[str, Any]] = self.get(url, "application/dicom+json").json()
        return metadata

    def series_url(self, collection: str, study_instance_uid: str, series_instance_uid: str) -> str:
        return f"{self.dicomweb(collection)}/studies/{study_instance_uid}/series/{series_instance_uid}"

    def series_parts(self, collection: str, study_instance_uid: str,
                     series_instance_uid: str) -> Iterator[bytes]:
        """The bytes of each instance of the series as stored, as they arrive: one request. The caller
        checks what it got against what it wanted (by SHA-256: an instance the archive could not send as
        stored has other bytes); nothing is retried here. ArchiveError on a refusal or an answer that is
        not in parts, ArchiveUnreachable when no answer came or it stopped short."""
        url = self.series_url(collection, study_instance_uid, series_instance_uid)
        try:
            with self.client.stream("GET", url, headers={"Accept": INSTANCE_ACCEPT}) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ArchiveError(f"{url}: {problem_text(response)}")
                boundary = boundary_of(response.headers.get("content-type", ""))
                if boundary is None:
                    raise ArchiveError(f"{url}: an answer not in parts")
                splitter = MultipartSplitter(boundary)
                pieces: list[bytes] = []
                for chunk in response.iter_bytes():
                    for event, data in splitter.feed(chunk):
                        if event == "data":
                            assert data is not None
                            pieces.append(data)
                        elif event == "begin":
                            pieces = []
                        else:
                            whole = b"".join(pieces)
                            pieces = []
                            yield whole
                if not splitter.complete:
                    raise ArchiveUnreachable(f"{url}: the answer stopped short")
        except httpx.TransportError as exc:
            raise ArchiveUnreachable(f"{url}: {type(exc).__name__}: {exc}") from exc

    def instance(self, collection: str, study_instance_uid: str, series_instance_uid: str,
                 sop_instance_uid: str) -> bytes:
        """The instance's bytes as stored (WADO-RS, transfer-syntax=*)."""
        url = self.instance_url(collection, study_instance_uid, series_instance_uid, sop_instance_uid)
        return single_part(self.get(url, INSTANCE_ACCEPT))
