"""The ``dicomgw`` command: ``serve`` the embedded gateway, ``upload`` folders of DICOM files."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

from dicomgw.config import Settings
from dicomgw_client import upload
from dicomgw_gateway import audit, keys, pacs, partitions, share, smoke, soak, storage_report
from dicomgw_gateway.stack import main as stack_main


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from dicomgw_gateway.app import create_app

    settings = Settings()
    if args.port is not None:
        settings.port = args.port
    if args.host is not None:
        settings.host = args.host
    app = create_app(settings)
    url = f"http://{settings.host}:{settings.port}{settings.http.base_path}"
    print(f"dicomgw serving DICOMweb at {url}  (data in {settings.data_dir.resolve()}; Ctrl-C stops)",
          flush=True)
    if settings.auth.mode == "none" and not _loopback(settings.host):
        print(f"WARNING: authentication is off (DICOMGW_AUTH_MODE=none) and {settings.host} is not a "
              "loopback address: anybody who reaches this port can read and write every study. Set "
              "DICOMGW_AUTH_MODE=required and create API keys with `dicomgw keys create`.",
              file=sys.stderr, flush=True)
    # uvicorn stops on SIGINT/SIGTERM after in-flight requests finish; the lifespan then closes the
    # index and the store, so nothing is left half-written.
    options = {"host": settings.host, "port": settings.port, "log_level": settings.log_level,
               "timeout_graceful_shutdown": 30, "access_log": False}
    workers = args.workers or settings.http.workers or os.cpu_count() or 1
    if workers == 1:
        uvicorn.run(app, **options)  # type: ignore[arg-type]
        return 0
    # Several processes on one socket: Python runs one thread of Python at a time, and a STOW
    # request's parsing and indexing is Python. The schema is brought up to date once, here.
    if settings.index.migrate:
        from dicomgw.index.db import upgrade_sync

        upgrade_sync(settings.index_url)
    os.environ["DICOMGW_INDEX_MIGRATE"] = "false"
    # /metrics answers for every process: each keeps its counters in files here (prometheus_client's
    # multiprocess mode), emptied at each start so that counters begin at zero as with one process
    metrics_dir = settings.data_dir / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir.resolve())
    # This process becomes uvicorn's supervisor, which needs none of what this command imported
    # (130 MB): exec'd, it keeps its pid (signals reach it) and only the workers load the app.
    # (dicomgw_gateway.workers: uvicorn's supervisor, with workers that share connections fairly)
    os.execv(sys.executable, [
        sys.executable, "-m", "dicomgw_gateway.workers", "--workers", str(workers),
        "--host", settings.host, "--port", str(settings.port), "--log-level", settings.log_level])


def _verify(args: argparse.Namespace) -> int:
    """Integrity report from the index this process's settings name (embedded or distributed)."""
    import asyncio
    import json

    from dicomgw.runtime import open_runtime
    from dicomgw.status import integrity_status

    async def report() -> dict[str, object]:
        async with open_runtime(Settings()) as runtime:
            if args.now:
                from dicomgw_worker.tasks import sweep

                runtime.settings.worker.verify_cycle_seconds = 0
                await sweep(runtime, limit=10**9)
            return await integrity_status(runtime.index, replica_enabled=runtime.replica is not None)

    status = asyncio.run(report())
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        replica = status["replica"]
        assert isinstance(replica, dict)
        rows = [("instances", status["instances"]), ("verified", status["verified"]),
                ("pending verification", status["pending"]), ("mismatched", status["mismatched"]),
                ("missing", status["missing"]), ("lost (no good copy)", status["lost"]),
                ("repaired", status["repaired"]),
                ("replicated", replica["replicated"] if replica["enabled"] else "no replica"),
                ("replica missing", replica["missing"]),
                ("oldest unverified (s)", status["oldest_unverified_seconds"]),
                ("queued work", status["outbox"])]
        for name, value in rows:
            print(f"{name:<24}{value}")
    damaged = int(status["mismatched"]) + int(status["missing"]) + int(status["lost"])  # type: ignore[call-overload]
    return 1 if damaged else 0


def _orphans(args: argparse.Namespace) -> int:
    """The orphan sweep on demand (dicomgw.orphans), on the index and stores ``keys.cli_settings`` finds."""
    import asyncio
    import json

    from dicomgw.orphans import OrphanReport
    from dicomgw.runtime import open_runtime
    from dicomgw_worker.tasks import orphan_sweep

    settings, where = keys.cli_settings()
    print(f"orphan sweep of {where}", file=sys.stderr)

    async def run() -> OrphanReport:
        async with open_runtime(settings, migrate=settings.index.migrate) as runtime:
            return await orphan_sweep(runtime, grace_seconds=args.grace, dry_run=args.dry_run,
                                      limit=args.limit)

    report = asyncio.run(run())
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
        return 0
    for o in report.orphans:
        modified = o.modified.strftime("%Y-%m-%dT%H:%M:%SZ")
        print(f"{o.store:<8} {o.action:<8} {o.size:>12} {modified}  {o.key}  ({o.reason})")
    summary = report.summary()
    print(f"{'(dry run) ' if report.dry_run else ''}listed {sum(report.listed.values())} originals; "
          f"{summary['found']} orphans ({summary['bytes']} bytes): {summary['indexed']} indexed, "
          f"{summary['removed']} removed, {summary['kept']} kept, {summary['skipped']} skipped; "
          f"{sum(report.young.values())} unreferenced within the grace period of {report.grace_seconds:g} s"
          + ("" if report.complete else "; stopped at the limit, run again to carry on"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dicomgw", description="DICOMweb gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the embedded gateway (STOW/QIDO/WADO in one process)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None, help="default: $PORT or 8080")
    serve.add_argument("--workers", type=int, default=None,
                       help="HTTP processes (default: $DICOMGW_HTTP_WORKERS, or one per CPU core)")
    serve.set_defaults(func=_serve)
    upload.add_parser(sub, prog="dicomgw")  # the client's upload, with the client's --url/--token
    smoke.add_parser(sub)
    pacs.add_parser(sub)
    keys.add_parser(sub)
    partitions.add_parser(sub)
    share.add_parser(sub)
    audit.add_parser(sub)
    storage_report.add_parser(sub)
    stack = sub.add_parser("stack", help="the local multi-process stack (make up / make down)")
    stack.add_argument("action", choices=["up", "down"])
    stack.add_argument("--run-dir", type=Path, default=Path("var/stack"))
    stack.set_defaults(func=lambda a: stack_main(a.action, a.run_dir))
    soak_parser = sub.add_parser("soak", help="chaos soak: a local stack under load and faults, then an "
                                 "audit of every acknowledged instance (make soak)")
    soak.add_arguments(soak_parser)
    soak_parser.set_defaults(func=soak.main)
    verify = sub.add_parser("verify", help="integrity report: verified, pending, damaged, replicated")
    verify.add_argument("--report", action="store_true", help="print the report (the default)")
    verify.add_argument("--now", action="store_true", help="first queue every original for re-verification")
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    verify.set_defaults(func=_verify)
    orphans = sub.add_parser("orphans", help="originals in the store that no index row references")
    orphans_sub = orphans.add_subparsers(dest="action", required=True)
    orphans_sweep = orphans_sub.add_parser(
        "sweep", help="index the complete ones, remove the rest (past the grace period; see README)")
    orphans_sweep.add_argument("--grace", type=float, default=None, metavar="SECONDS",
                               help="leave alone what is younger (default: "
                                    "$DICOMGW_WORKER_ORPHAN_GRACE_SECONDS, 3600)")
    orphans_sweep.add_argument("--dry-run", action="store_true", help="say what would be done, do nothing")
    orphans_sweep.add_argument("--limit", type=int, default=10_000,
                               help="stop after indexing or removing this many (default 10000)")
    orphans_sweep.add_argument("--json", action="store_true", help="machine-readable output")
    orphans_sweep.set_defaults(func=_orphans)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
