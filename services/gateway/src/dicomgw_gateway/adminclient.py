"""The connection of the commands that act on a running gateway (partitions, share): the client's admin
API (``dicomgw_client.admin``) with the server's default URL.

They work the same against `make run`, `make up` and a cluster: ``--url`` is the DICOMweb root
(``$DICOMGW_URL``; else the `make up` stack running from this folder; else the embedded gateway's
default), ``--token`` a bearer token or API key (``$DICOMGW_TOKEN``) with dicom.admin. The admin API
lives at the root of the same origin: ``{scheme}://{host}/admin/...``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from dicomgw_client import admin as client_admin
from dicomgw_client.cli import EMBEDDED_URL
from dicomgw_client.errors import ClientError
from dicomgw_gateway.stack import StackConfig


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


class Gateway(client_admin.Gateway):
    """The client's admin API (``dicomgw_client.admin``) at ``url``, else at ``default_url()``; a refusal
    ends the command (CommandFailed)."""

    def __init__(self, url: str | None, token: str | None, *, timeout: float = 60) -> None:
        try:
            super().__init__(url or default_url(), token, timeout=timeout)
        except ClientError as exc:
            raise CommandFailed(str(exc)) from None

    def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            return super().admin(method, path, **kwargs)
        except ClientError as exc:
            raise CommandFailed(str(exc)) from None


def admin_list(args: argparse.Namespace, path: str) -> list[dict[str, Any]] | None:
    """The list ``GET /admin/{path}`` answers, for a ``list`` command (printed as it came with --json)."""
    with Gateway(args.url, args.token) as gateway:
        return client_admin.admin_list(gateway, path, as_json=args.json)
