"""``dicomgw share create|status|list|pull``: de-identified research collections, and pulling them.

    dicomgw share create mr-brain-2024 --from hospital-a \\
        --query 'ModalitiesInStudy=MR&StudyDate=20240101-20241231' \\
        --profile basic,retain-longitudinal --nifti --wait
    dicomgw share pull mr-brain-2024 ./mr-brain-2024

``create`` (dicom.admin) defines the collection, or builds its next version when it exists: the query's
studies of the source partition, de-identified (DICOM PS3.15 Annex E, the options named in
``--profile``), into a read-only partition of the collection's name, with a manifest (CSV and
Parquet) and, with ``--nifti``, a NIfTI volume per series. ``--query`` takes QIDO-RS study-level
parameters (empty: every study). ``pull`` (dicom.read, or dicom.read:NAME) downloads a version with
DICOMweb, verifies every file against the manifest's SHA-256, and can be run again to resume.
Profile options: basic (always), retain-longitudinal (dates shifted per patient, intervals kept),
retain-patient-characteristics (sex, age, size, weight...), retain-device-identity, clean-descriptors
(study and series descriptions and protocol names kept where they name nobody).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from dicomgw.collections import manifest
from dicomgw_gateway.adminclient import (
    CommandFailed,
    Gateway,
    add_connection_args,
    admin_list,
    problem_text,
)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("share", help="de-identified research collections: create, status, pull",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="define a collection, or build its next version")
    create.add_argument("name", help="the collection (and its partition): lower-case letters, digits, -")
    create.add_argument("--from", dest="source", default="default",
                        help="the partition the studies come from (default: default)")
    create.add_argument("--query", default="", help="QIDO-RS study-level parameters, e.g. "
                        "'ModalitiesInStudy=MR&StudyDate=20240101-20241231' (default: every study)")
    create.add_argument("--profile", default="basic",
                        help="basic[,retain-longitudinal][,retain-patient-characteristics]"
                             "[,retain-device-identity][,clean-descriptors]")
    create.add_argument("--nifti", action="store_true", help="also a NIfTI volume per series (dcm2niix)")
    create.add_argument("--wait", action="store_true", help="show progress until the version is complete")
    create.add_argument("--quiet", action="store_true", help="no progress bar")
    add_connection_args(create)
    create.set_defaults(func=_create)
    status = actions.add_parser("status", help="a collection's versions and progress")
    status.add_argument("name")
    status.add_argument("--json", action="store_true")
    add_connection_args(status)
    status.set_defaults(func=_status)
    listing = actions.add_parser("list", help="every collection")
    listing.add_argument("--json", action="store_true")
    add_connection_args(listing)
    listing.set_defaults(func=_list)
    pull = actions.add_parser("pull", help="download a collection version and verify every file")
    pull.add_argument("name")
    pull.add_argument("dest", type=Path)
    pull.add_argument("--version", default="latest", help="a version number (default: the latest)")
    pull.add_argument("--concurrency", type=int, default=8, help="downloads at once")
    pull.add_argument("--quiet", action="store_true", help="no progress bar")
    add_connection_args(pull)
    pull.set_defaults(func=_pull)


def _version_line(v: dict[str, Any]) -> str:
    total = v["pending"] + v["instances"] + v["excluded"]
    text = (f"version {v['version']}: {v['state']}, {v['instances']} instances, {v['excluded']} excluded"
            + (f", {v['pending']} of {total} to go" if v["pending"] else ""))
    return text + (f" ({v['detail']})" if v.get("detail") else "")


def _create(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    with Gateway(args.url, args.token) as gateway:
        described = gateway.admin("POST", "collections", json={
            "name": args.name, "source": args.source, "query": args.query, "profile": args.profile,
            "nifti": args.nifti})
        [version] = described["versions"]
        number = version["version"]
        print(f"collection {args.name}: building version {number} from {args.source} "
              f"({described['query'] or 'every study'}; {described['profile']})")
        if not args.wait:
            return 0
        version = _wait(gateway, args.name, number, console, quiet=args.quiet)
        print(_version_line(version))
        if version["state"] != "complete":
            return 1
        print(f"DICOMweb: {gateway.root}/partitions/{args.name}")
        print(f"manifest: {gateway.origin}/collections/{args.name}/versions/{number}/manifest.parquet")
    return 0


def _wait(gateway: Gateway, name: str, number: int, console: Console, *, quiet: bool) -> dict[str, Any]:
    with Progress(TextColumn(f"[bold]{name} v{number}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} instances {task.fields[state]}"),
                  TimeRemainingColumn(), console=console, disable=quiet) as progress:
        task = progress.add_task("build", total=None, state="")
        while True:
            [version] = gateway.admin("GET", f"collections/{name}")["versions"][number - 1:number]
            total = version["pending"] + version["instances"] + version["excluded"]
            progress.update(task, total=total or None, completed=total - version["pending"],
                            state=version["state"])
            if version["state"] in ("complete", "failed"):
                return version
            time.sleep(1)


def _status(args: argparse.Namespace) -> int:
    with Gateway(args.url, args.token) as gateway:
        described = gateway.admin("GET", f"collections/{args.name}")
    if args.json:
        print(json.dumps(described, indent=2))
        return 0
    print(f"collection {described['name']} from {described['source']}: "
          f"{described['query'] or 'every study'} ({described['profile']}"
          f"{', NIfTI' if described['nifti'] else ''})")
    for v in described["versions"]:
        print("  " + _version_line(v))
    return 0


def _list(args: argparse.Namespace) -> int:
    collections = admin_list(args, "collections")
    for c in collections or ():
        latest = c["versions"][-1] if c["versions"] else None
        print(f"{c['name']:<24}{c['source']:<16}" + (_version_line(latest) if latest else "no version"))
    return 0


# ---- pull --------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class Puller:
    """Downloads one collection version into ``dest``; a file already there with its SHA-256 is kept."""

    def __init__(self, gateway: Gateway, name: str, dest: Path, client: httpx.AsyncClient) -> None:
        self.gateway, self.name, self.dest, self.client = gateway, name, dest, client

    async def get(self, url: str, **headers: str) -> httpx.Response:
        for attempt in range(6):
            try:
                response = await self.client.get(url, headers=headers)
            except httpx.TransportError:
                if attempt == 5:
                    raise
            else:
                if response.status_code < 500 and response.status_code != 429:
                    break
                if attempt == 5:
                    break
            await asyncio.sleep(min(10.0, 0.5 * 2 ** attempt))
        if response.status_code >= 400:
            raise CommandFailed(f"{url}: {problem_text(response)}")
        return response

    async def instance(self, row: manifest.ManifestRow) -> int:
        target = self.dest / row.path
        if target.is_file() and await asyncio.to_thread(_sha256, target) == row.sha256:
            return 0
        url = (f"{self.gateway.root}/partitions/{self.name}/studies/{row.study_instance_uid}"
               f"/series/{row.series_instance_uid}/instances/{row.sop_instance_uid}")
        # the object as stored (transfer-syntax=*): its bytes are what the manifest's SHA-256 is of
        response = await self.get(url, accept="application/dicom; transfer-syntax=*")
        data = response.content
        if hashlib.sha256(data).hexdigest() != row.sha256:
            raise CommandFailed(f"{row.path}: the downloaded bytes do not have the manifest's SHA-256")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        partial.write_bytes(data)
        os.replace(partial, target)
        return len(data)


def _pull(args: argparse.Namespace) -> int:
    return asyncio.run(_pull_async(args))


async def _pull_async(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    with Gateway(args.url, args.token) as gateway:
        headers = dict(gateway.client.headers)
        async with httpx.AsyncClient(headers=headers, timeout=300,
                                     limits=httpx.Limits(max_connections=args.concurrency)) as client:
            puller = Puller(gateway, args.name, args.dest, client)
            base = f"{gateway.origin}/collections/{args.name}/versions"
            versions = (await puller.get(base)).json()["versions"]
            if not versions:
                raise CommandFailed(f"the collection {args.name} has no complete version yet")
            chosen = versions[-1] if args.version == "latest" else next(
                (v for v in versions if str(v["version"]) == args.version), None)
            if chosen is None:
                raise CommandFailed(f"the collection {args.name} has no complete version {args.version}")
            number = chosen["version"]
            args.dest.mkdir(parents=True, exist_ok=True)
            for filename in chosen["files"]:
                response = await puller.get(f"{base}/{number}/{filename}")
                target = args.dest / filename
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(response.content)
            rows = manifest.read(args.dest / "manifest.csv")
            limit = asyncio.Semaphore(args.concurrency)
            with Progress(TextColumn(f"[bold]pull {args.name} v{number}"), BarColumn(),
                          TextColumn("{task.completed}/{task.total} instances"), DownloadColumn(),
                          TimeRemainingColumn(), console=console, disable=args.quiet) as progress:
                task = progress.add_task("pull", total=len(rows))

                async def one(row: manifest.ManifestRow) -> None:
                    async with limit:
                        await puller.instance(row)
                    progress.advance(task)

                await asyncio.gather(*(one(r) for r in rows))
    bad = await asyncio.to_thread(manifest.verify, args.dest, rows)
    if bad:
        print(f"{len(bad)} of {len(rows)} files do not match the manifest: {', '.join(bad[:5])}",
              file=sys.stderr)
        return 1
    print(f"pulled {args.name} version {number}: {len(rows)} instances into {args.dest}, "
          "every file verified against the manifest's SHA-256")
    return 0
