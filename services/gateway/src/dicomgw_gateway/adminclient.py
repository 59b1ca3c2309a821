"""The admin REST client of the commands that act on a running gateway (partitions, share).

They work the same against `make run`, `make up` and a cluster: ``--url`` is the DICOMweb root
(``$DICOMGW_URL``; else the `make up` stack running from this folder; else the embedded gateway's
default), ``--token`` a bearer token or API key (``$DICOMGW_TOKEN``) with dicom.admin. The admin API
lives at the root of the same origin: ``{scheme}://{host}/admin/...``.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any
from urllib.parse import urlsplit

import httpx

from dicomgw_client.api import problem_text
from dicomgw_gateway.stack import StackConfig

EMBEDDED_URL = "http://127.0.0.1:8080/dicom-web"


def default_url() -> str:
    if os.environ.get("DICOMGW_URL"):
        return os.environ["DICOMGW_URL"]
    stack = StackConfig.running()
    return stack.url if stack is not None else EMBEDDED_URL


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None,
                        help="DICOMweb root (default: $DICOMGW_URL, else the running `make up` stack, "
                             f"else {EMBEDDED_URL})")
    parser.add_argument("--token", default=os.environ.get("DICOMGW_TOKEN"),
                        help="bearer token or API key (default: $DICOMGW_TOKEN)")


class CommandFailed(SystemExit):
    """A refusal from the gateway, said in one line on stderr (exit status 1)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"dicomgw: {message}")


class Gateway:
    """One gateway's DICOMweb root and admin API, with the caller's credential."""

    def __init__(self, url: str | None, token: str | None, *, timeout: float = 60) -> None:
        self.root = (url or default_url()).rstrip("/")
        parts = urlsplit(self.root)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(headers=headers, timeout=timeout)

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call ``/admin/{path}``; the JSON answer, or CommandFailed with the problem's detail."""
        url = f"{self.origin}/admin/{path.lstrip('/')}"
        try:
            response = self.client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise CommandFailed(f"cannot reach {url}: {exc}") from None
        if response.status_code >= 400:
            raise CommandFailed(problem_text(response))
        return response.json() if response.content else None


def admin_list(args: argparse.Namespace, path: str) -> list[dict[str, Any]] | None:
    """The list ``GET /admin/{path}`` answers (under the key ``path``), for a ``list`` command: with
    ``--json`` it is printed as it came and None is returned."""
    with Gateway(args.url, args.token) as gateway:
        items: list[dict[str, Any]] = gateway.admin("GET", path)[path]
    if args.json:
        print(json.dumps(items, indent=2))
        return None
    return items
