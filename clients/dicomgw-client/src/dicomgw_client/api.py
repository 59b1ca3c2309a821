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

import os
import threading
import time
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from dicomgw_client.errors import ArchiveError, ArchiveUnreachable

# the object as stored: its bytes are what the manifest's SHA-256 is of
INSTANCE_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


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
                        headers=headers, timeout=self.timeout, follow_redirects=True,
                        limits=httpx.Limits(max_connections=self.connections),
                        event_hooks={"request": [self._count]})
                    self._pid = pid
        return self._client

    def _count(self, request: httpx.Request) -> None:
        with self._lock:
            self.requests += 1

    def close(self) -> None:
        if self._client is not None and self._pid == os.getpid():
            self._client.close()
        self._client = None

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

    def instance(self, collection: str, study_instance_uid: str, series_instance_uid: str,
                 sop_instance_uid: str) -> bytes:
        """The instance's bytes as stored (WADO-RS, transfer-syntax=*)."""
        url = self.instance_url(collection, study_instance_uid, series_instance_uid, sop_instance_uid)
        return single_part(self.get(url, INSTANCE_ACCEPT))
