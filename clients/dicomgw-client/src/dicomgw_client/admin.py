"""The gateway's admin REST API, as ``share`` (and the server's ``partitions``) call it.

``url`` is the DICOMweb root (``http://127.0.0.1:8080/dicom-web``); the admin API lives at the root of
the same origin, ``{scheme}://{host}/admin/...``. The credential, a bearer token or an API key with
dicom.admin, goes in ``Authorization: Bearer ...``. A refusal or a gateway out of reach is an
``ArchiveError`` whose message is one line: the commands print it after their name.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import httpx

from dicomgw_client.api import problem_text
from dicomgw_client.errors import ArchiveError, ArchiveUnreachable, ClientError


class Gateway:
    """One gateway's DICOMweb root and admin API, with the caller's credential."""

    def __init__(self, url: str, token: str | None, *, timeout: float = 60) -> None:
        self.root = url.rstrip("/")
        parts = urlsplit(self.root)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ClientError(f"not an http(s) DICOMweb root: {url!r}")
        self.origin = f"{parts.scheme}://{parts.netloc}"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(headers=headers, timeout=timeout)

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call ``/admin/{path}``; the JSON answer, or ArchiveError with the problem's detail."""
        url = f"{self.origin}/admin/{path.lstrip('/')}"
        try:
            response = self.client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise ArchiveUnreachable(f"cannot reach {url}: {exc}") from None
        if response.status_code >= 400:
            raise ArchiveError(problem_text(response))
        return response.json() if response.content else None

    def admin_bytes(self, path: str) -> bytes:
        """The body of ``GET /admin/{path}`` (a file the admin API serves)."""
        url = f"{self.origin}/admin/{path.lstrip('/')}"
        try:
            response = self.client.get(url)
        except httpx.HTTPError as exc:
            raise ArchiveUnreachable(f"cannot reach {url}: {exc}") from None
        if response.status_code >= 400:
            raise ArchiveError(f"{url}: {problem_text(response)}")
        return response.content


def admin_list(gateway: Gateway, path: str, *, as_json: bool) -> list[dict[str, Any]] | None:
    """The list ``GET /admin/{path}`` answers (under the key ``path``), for a ``list`` command: with
    ``as_json`` it is printed as it came and None is returned."""
    items: list[dict[str, Any]] = gateway.admin("GET", path)[path]
    if as_json:
        print(json.dumps(items, indent=2))
        return None
    return items
