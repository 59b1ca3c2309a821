"""``dicomgw audit``: who touched which study, one event per line, from the audit trail in the index.

Which index: as for ``dicomgw keys`` (DICOMGW_* settings, else the running `make up` stack, else the
embedded gateway's). ``--xml`` prints each event as its PS3.15 A.5 AuditMessage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime

from dicomgw.audit import AuditEvent, AuditTrail, to_xml
from dicomgw.auth.keys import ApiKeyError
from dicomgw.index.db import create_engine, upgrade
from dicomgw_gateway.keys import cli_settings, duration

OUTCOMES = {0: "success", 4: "minor-failure", 8: "serious-failure", 12: "major-failure"}


def since_of(text: str | None, now: datetime) -> datetime | None:
    """`24h`, `7d`... ago, or an ISO date or date-time."""
    if not text:
        return None
    span = duration(text)
    if span is not None:
        return now - span
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def line(event: AuditEvent) -> str:
    at = event.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    request = f"{event.method} {event.route}" + (f"?{event.query}" if event.query else "")
    parts = [at, f"{event.event}({event.action})", OUTCOMES.get(event.outcome, str(event.outcome)),
             f"who={event.who}({event.who_kind})", f"from={event.source}", request]
    if event.studies:
        parts.append("studies=" + ",".join(event.studies))
    if event.count > 1:
        parts.append(f"x{event.count}")
    if event.detail:
        parts.append(f"detail={json.dumps(event.detail)}")
    return "  ".join(parts)


async def _run(args: argparse.Namespace) -> int:
    settings, source = cli_settings()
    print(f"(audit trail of {source})", file=sys.stderr)
    if settings.index.migrate:
        await upgrade(settings.index_url)
    engine = create_engine(settings.index_url, pool_size=1)
    try:
        trail = AuditTrail(engine)
        events = await trail.events(study=args.study, who=args.who,
                                    since=since_of(args.since, datetime.now(UTC)), limit=args.limit)
    finally:
        await engine.dispose()
    for event in events:
        if args.xml:
            print(to_xml(event, settings.audit.source_id))
        elif args.json:
            print(json.dumps({**event.__dict__, "at": event.at.isoformat(), "studies": list(event.studies)}))
        else:
            print(line(event))
    return 0


def _main(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except (ValueError, ApiKeyError) as exc:
        print(f"dicomgw audit: {exc}", file=sys.stderr)
        return 2


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("audit", help="who touched which study: the audit trail, one event per line")
    parser.add_argument("--study", help="only events about this Study Instance UID")
    parser.add_argument("--who", help="only events of this user or API key name")
    parser.add_argument("--since", help="24h, 7d... ago, or an ISO date")
    parser.add_argument("--limit", type=int, default=10_000)
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--xml", action="store_true", help="PS3.15 A.5 AuditMessage XML, one per line")
    form.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.set_defaults(func=_main)
