"""``dicomgw share create|status|list|review|publish|pull``: the client package's ``dicomgw-client
share`` (``dicomgw_client.share``), one implementation: its arguments and runs, with the server's
connection arguments (``--url`` defaults to the running `make up` stack when $DICOMGW_URL is unset)."""

from __future__ import annotations

import argparse

from dicomgw_client import share
from dicomgw_gateway.adminclient import add_connection_args, default_url


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    share.add_parser(sub, prog="dicomgw", connection=add_connection_args, default_url=default_url)
