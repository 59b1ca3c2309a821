"""``dicomgw keys create|list|revoke``: API keys for machines (PACS forwarders, scripts, pipelines).

The command works on the index its settings name: DICOMGW_* variables when set, else the `make up`
stack running from this folder (var/stack), else the embedded gateway's index (DATA_DIR).
A new key is printed once, alone on the last line; only its keyed hash is stored.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from dicomgw.auth.keys import ApiKeyError, ApiKeyInfo, ApiKeys
from dicomgw.config import Settings
from dicomgw.index.db import create_engine, upgrade
from dicomgw_gateway.stack import StackConfig

DURATION = re.compile(r"^(\d+)([hdwy])$")
UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1),
         "y": timedelta(days=365)}


def cli_settings() -> tuple[Settings, str]:
    """Settings for a command run by hand, and where they came from (said on stderr)."""
    if any(name.startswith("DICOMGW_INDEX_") for name in os.environ):
        return Settings(), "the DICOMGW_* settings of this shell"
    stack = StackConfig.running()
    if stack is not None:
        saved = {k: os.environ.get(k) for k in stack.service_env()}
        os.environ.update(stack.service_env())
        try:
            return Settings(), f"the running `make up` stack ({stack.run_dir})"
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    settings = Settings()
    return settings, f"the embedded gateway's index ({settings.data_dir})"


def duration(text: str) -> timedelta | None:
    """`90d`, `12h`, `4w`, `1y` as a timedelta; None when the text is not such a duration."""
    match = DURATION.match(text.strip())
    return int(match.group(1)) * UNITS[match.group(2)] if match else None


def parse_expiry(text: str | None, now: datetime) -> datetime | None:
    """`90d`, `12h`, `4w`, `1y`, or an ISO 8601 date or date-time (UTC unless it says)."""
    if not text:
        return None
    span = duration(text)
    if span is not None:
        return now + span
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ApiKeyError(f"--expires {text!r}: give a duration (90d, 12h, 4w, 1y) or an ISO date") from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if moment <= now:
        raise ApiKeyError(f"--expires {text!r} is in the past")
    return moment


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else "-"


def _state(info: ApiKeyInfo, now: datetime) -> str:
    if info.revoked_at:
        return "revoked"
    return "active" if info.usable(now) else "expired"


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    if settings.index.migrate:
        await upgrade(settings.index_url)
    engine: AsyncEngine = create_engine(settings.index_url, pool_size=1)
    keys = ApiKeys(engine, settings.auth.key_secret)
    now = datetime.now(UTC)
    try:
        if args.action == "create":
            scopes = {s.strip() for s in args.scopes.replace(" ", ",").split(",") if s.strip()}
            key, info = await keys.create(args.name, scopes, parse_expiry(args.expires, now))
            print(f"created API key {info.name!r}: scopes {' '.join(sorted(info.scopes))}, "
                  f"expires {_when(info.expires_at) if info.expires_at else 'never'}.", file=sys.stderr)
            print("It is shown this once and stored only as a hash; send it as "
                  "`Authorization: Bearer <key>`:", file=sys.stderr)
            print(key, flush=True)
        elif args.action == "list":
            rows = [("NAME", "KEY", "SCOPES", "STATE", "CREATED", "EXPIRES", "LAST USED")]
            for info in await keys.list():
                rows.append((info.name, info.prefix + "...", ",".join(sorted(info.scopes)),
                             _state(info, now), _when(info.created_at), _when(info.expires_at),
                             _when(info.last_used_at)))
            widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
            for row in rows:
                print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        else:
            info = await keys.revoke(args.name)
            print(f"revoked API key {info.name!r} at {_when(info.revoked_at)}; every service refuses it "
                  f"within {settings.auth.key_cache_seconds:g} s")
    except ApiKeyError as exc:
        print(f"dicomgw keys {args.action}: {exc}", file=sys.stderr)
        return 2
    finally:
        await engine.dispose()
    return 0


def _main(args: argparse.Namespace) -> int:
    settings, source = cli_settings()
    print(f"(keys of {source})", file=sys.stderr)
    return asyncio.run(_run(args, settings))


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("keys", help="API keys for machines: create, list, revoke")
    actions = parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a key; it is printed once, on the last line")
    create.add_argument("name", help="who uses it, e.g. orthanc-forwarder (never reused)")
    create.add_argument("--scopes", required=True,
                        help="comma-separated: dicom.read, dicom.write, dicom.admin")
    create.add_argument("--expires", help="90d, 12h, 4w, 1y or an ISO date (default: never)")
    actions.add_parser("list", help="name, scopes, state, created, expires, last used")
    revoke = actions.add_parser("revoke", help="revoke a key (takes effect within seconds)")
    revoke.add_argument("name")
    parser.set_defaults(func=_main)
