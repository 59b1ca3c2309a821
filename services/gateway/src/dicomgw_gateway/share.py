"""``dicomgw share create|status|list|review|publish|pull``: de-identified research collections.

    dicomgw share create mr-brain-2024 --from hospital-a \\
        --query 'ModalitiesInStudy=MR&StudyDate=20240101-20241231' \\
        --profile basic,retain-longitudinal --nifti --wait
    dicomgw share pull mr-brain-2024 ./mr-brain-2024

``create`` (dicom.admin) defines the collection, or builds its next version when it exists: the query's
studies of the source partition, de-identified (DICOM PS3.15 Annex E, the options named in
``--profile``), into a read-only partition of the collection's name, with a manifest (CSV and
Parquet) and, with ``--nifti``, a NIfTI volume per series. ``--query`` takes QIDO-RS study-level
parameters (empty: every study). ``pull`` (dicom.read, or dicom.read:NAME) is the client package's
``dicomgw-client pull`` (``dicomgw_client.cli``): a version downloaded with DICOMweb, every file
verified against the manifest's SHA-256, resumable, with a manifest of the local files.
Profile options: basic (always), retain-longitudinal (dates shifted per patient, intervals kept),
retain-patient-characteristics (sex, age, size, weight...), retain-device-identity, clean-descriptors
(study and series descriptions and protocol names kept where they name nobody), clean-pixels (burned-in
text found by OCR and device rules, redacted, and proven gone by a second OCR pass; images where text is
still read are left out). With clean-pixels a version holds its cleaned images for review (unless
``--no-review``): ``review`` draws them with their boxes, ``publish`` stores them (``--reject`` some).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from dicomgw_client import cli as pull_cli
from dicomgw_gateway import review
from dicomgw_gateway.adminclient import Gateway, add_connection_args, admin_list, default_url


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
                             "[,retain-device-identity][,clean-descriptors][,clean-pixels]")
    create.add_argument("--review", action=argparse.BooleanOptionalAction, default=None,
                        help="hold the cleaned images for review before they are stored "
                             "(default: with clean-pixels)")
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
    review_parser = review.add_parser(actions)
    add_connection_args(review_parser)
    review_parser.set_defaults(func=review.run)
    publish = actions.add_parser("publish", help="end a version's review: store its cleaned images")
    publish.add_argument("name")
    publish.add_argument("--version", type=int, default=None, help="default: the latest version")
    publish.add_argument("--reject", action="append", default=[], metavar="SOP_INSTANCE_UID",
                         help="leave this cleaned image out (repeat for more)")
    publish.add_argument("--wait", action="store_true", help="show progress until the version is complete")
    publish.add_argument("--quiet", action="store_true", help="no progress bar")
    add_connection_args(publish)
    publish.set_defaults(func=_publish)
    pull = actions.add_parser("pull", help=pull_cli.PULL_HELP, description=pull_cli.PULL_DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    pull_cli.add_pull_arguments(pull)
    add_connection_args(pull)
    pull.set_defaults(func=_pull)


def _version_line(v: dict[str, Any]) -> str:
    held = v.get("review", 0)
    total = v["pending"] + v["instances"] + v["excluded"] + held
    text = (f"version {v['version']}: {v['state']}, {v['instances']} instances, {v['excluded']} excluded"
            + (f", {held} held for review" if held else "")
            + (f", {v['pending']} of {total} to go" if v["pending"] else ""))
    return text + (f" ({v['detail']})" if v.get("detail") else "")


def _create(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    with Gateway(args.url, args.token) as gateway:
        described = gateway.admin("POST", "collections", json={
            "name": args.name, "source": args.source, "query": args.query, "profile": args.profile,
            "nifti": args.nifti, "review": args.review})
        [version] = described["versions"]
        number = version["version"]
        print(f"collection {args.name}: building version {number} from {args.source} "
              f"({described['query'] or 'every study'}; {described['profile']})")
        if not args.wait:
            return 0
        version = _wait(gateway, args.name, number, console, quiet=args.quiet)
        print(_version_line(version))
        if version["state"] == "review":
            print(f"review: dicomgw share review {args.name} --version {number}, then "
                  f"dicomgw share publish {args.name} --version {number}")
            return 0
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
            total = version["pending"] + version["instances"] + version["excluded"] + version.get("review", 0)
            progress.update(task, total=total or None, completed=total - version["pending"],
                            state=version["state"])
            if version["state"] in ("complete", "failed", "review"):
                return version
            time.sleep(1)


def _publish(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    with Gateway(args.url, args.token) as gateway:
        number = args.version or review.latest_version(gateway, args.name)
        gateway.admin("POST", f"collections/{args.name}/versions/{number}/publish",
                      json={"reject": args.reject})
        print(f"collection {args.name}: version {number} published after review"
              f"{f' ({len(args.reject)} rejected)' if args.reject else ''}; storing it")
        if not args.wait:
            return 0
        version = _wait(gateway, args.name, number, console, quiet=args.quiet)
        print(_version_line(version))
        return 0 if version["state"] == "complete" else 1


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


# ---- pull: the client's -----------------------------------------------------------------------------
def _pull(args: argparse.Namespace) -> int:
    args.url = args.url or default_url()
    return pull_cli.run_pull(args, prog="dicomgw")
