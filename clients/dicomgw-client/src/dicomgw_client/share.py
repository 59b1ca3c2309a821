"""``share create|status|list|review|publish|pull``: de-identified research collections.

``dicomgw-client share ...`` here; the server's ``dicomgw share ...`` is the same commands (it takes
their arguments and runs from ``add_parser``, with its own connection arguments and its own name).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from dicomgw_client import cli, review
from dicomgw_client.admin import Gateway, admin_list
from dicomgw_client.errors import ClientError
from dicomgw_client.progress import StatusLine

# a command's run: the parsed arguments and the command's name (for its messages); the exit status
Run = Callable[[argparse.Namespace, str], int]

HELP = "de-identified research collections: create, status, review, publish, pull"
DESCRIPTION = """\
De-identified research collections.

    {prog} share create mr-brain-2024 --from hospital-a \\
        --query 'ModalitiesInStudy=MR&StudyDate=20240101-20241231' \\
        --profile basic,retain-longitudinal --nifti --wait
    {prog} share pull mr-brain-2024 ./mr-brain-2024

`create` (dicom.admin) defines the collection, or builds its next version when it exists: the query's
studies of the source partition, de-identified (DICOM PS3.15 Annex E, the options named in
--profile), into a read-only partition of the collection's name, with a manifest (CSV and Parquet)
and, with --nifti, a NIfTI volume per series. --query takes QIDO-RS study-level parameters (empty:
every study). `pull` (dicom.read, or dicom.read:NAME) is the client package's `dicomgw-client pull`: a
version downloaded with DICOMweb, every file verified against the manifest's SHA-256, resumable, with
a manifest of the local files.
Profile options: basic (always), retain-longitudinal (dates shifted per patient, intervals kept),
retain-patient-characteristics (sex, age, size, weight...), retain-device-identity, clean-descriptors
(study and series descriptions and protocol names kept where they name nobody), clean-pixels (burned-in
text found by OCR and device rules, redacted, and proven gone by a second OCR pass; images where text is
still read are left out). With clean-pixels a version holds its cleaned images for review (unless
--no-review): `review` draws them with their boxes, `publish` stores them (--reject some).
"""


def add_parser(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
               *, prog: str = "dicomgw-client",
               connection: Callable[[argparse.ArgumentParser], None] | None = None,
               default_url: Callable[[], str] | None = None) -> argparse.ArgumentParser:
    """The ``share`` command and its actions under ``sub``. ``connection`` adds ``--url``/``--token``
    to each action (default: the client's); ``default_url`` gives the URL when ``--url`` left it None;
    ``prog`` names the command in messages. Each action's run is ``args.func(args)``."""
    add_connection = connection or cli.add_connection_arguments
    parser: argparse.ArgumentParser = sub.add_parser(
        "share", help=HELP, description=DESCRIPTION.format(prog=prog),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True)

    def action(name: str, run: Run, **kwargs: Any) -> argparse.ArgumentParser:
        added: argparse.ArgumentParser = actions.add_parser(name, **kwargs)
        added.set_defaults(func=functools.partial(_run, run, prog, default_url))
        return added

    create = action("create", run_create, help="define a collection, or build its next version")
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
    create.add_argument("--quiet", action="store_true", help="no progress line")
    add_connection(create)
    status = action("status", run_status, help="a collection's versions and progress")
    status.add_argument("name")
    status.add_argument("--json", action="store_true")
    add_connection(status)
    listing = action("list", run_list, help="every collection")
    listing.add_argument("--json", action="store_true")
    add_connection(listing)
    review_parser = action("review", review.run, help=review.HELP, description=review.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    review.add_review_arguments(review_parser)
    add_connection(review_parser)
    publish = action("publish", run_publish, help="end a version's review: store its cleaned images")
    publish.add_argument("name")
    publish.add_argument("--version", type=int, default=None, help="default: the latest version")
    publish.add_argument("--reject", action="append", default=[], metavar="SOP_INSTANCE_UID",
                         help="leave this cleaned image out (repeat for more)")
    publish.add_argument("--wait", action="store_true", help="show progress until the version is complete")
    publish.add_argument("--quiet", action="store_true", help="no progress line")
    add_connection(publish)
    pull = action("pull", cli.run_pull, help=cli.PULL_HELP, description=cli.PULL_DESCRIPTION,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_pull_arguments(pull)
    add_connection(pull)
    return parser


def _run(run: Run, prog: str, default_url: Callable[[], str] | None, args: argparse.Namespace) -> int:
    """An action's run: the URL its default when none was given; a refusal said in one line on stderr."""
    if not args.url and default_url is not None:
        args.url = default_url()
    try:
        return run(args, prog)
    except ClientError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1


def version_line(v: dict[str, Any]) -> str:
    held = v.get("review", 0)
    total = v["pending"] + v["instances"] + v["excluded"] + held
    text = (f"version {v['version']}: {v['state']}, {v['instances']} instances, {v['excluded']} excluded"
            + (f", {held} held for review" if held else "")
            + (f", {v['pending']} of {total} to go" if v["pending"] else ""))
    return text + (f" ({v['detail']})" if v.get("detail") else "")


def run_create(args: argparse.Namespace, prog: str) -> int:
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
        version = wait(gateway, args.name, number, quiet=args.quiet)
        if version["state"] == "review":
            print(f"review: {prog} share review {args.name} --version {number}, then "
                  f"{prog} share publish {args.name} --version {number}")
            return 0
        if version["state"] != "complete":
            return 1
        print(f"DICOMweb: {gateway.root}/partitions/{args.name}")
        print(f"manifest: {gateway.origin}/collections/{args.name}/versions/{number}/manifest.parquet")
    return 0


def wait(gateway: Gateway, name: str, number: int, *, quiet: bool) -> dict[str, Any]:
    """Poll the version until it is complete, failed or held for review, with a progress line; then
    print its line and return it."""
    with StatusLine(f"{name} v{number}", enabled=not quiet) as progress:
        while True:
            [version] = gateway.admin("GET", f"collections/{name}")["versions"][number - 1:number]
            total = version["pending"] + version["instances"] + version["excluded"] + version.get("review", 0)
            progress.update(done=total - version["pending"], total=total, state=version["state"])
            if version["state"] in ("complete", "failed", "review"):
                break
            time.sleep(1)
    print(version_line(version))
    return dict(version)


def run_publish(args: argparse.Namespace, prog: str) -> int:
    with Gateway(args.url, args.token) as gateway:
        number = args.version or review.latest_version(gateway, args.name)
        gateway.admin("POST", f"collections/{args.name}/versions/{number}/publish",
                      json={"reject": args.reject})
        print(f"collection {args.name}: version {number} published after review"
              f"{f' ({len(args.reject)} rejected)' if args.reject else ''}; storing it")
        if not args.wait:
            return 0
        return 0 if wait(gateway, args.name, number, quiet=args.quiet)["state"] == "complete" else 1


def run_status(args: argparse.Namespace, prog: str) -> int:
    with Gateway(args.url, args.token) as gateway:
        described = gateway.admin("GET", f"collections/{args.name}")
    if args.json:
        print(json.dumps(described, indent=2))
        return 0
    print(f"collection {described['name']} from {described['source']}: "
          f"{described['query'] or 'every study'} ({described['profile']}"
          f"{', NIfTI' if described['nifti'] else ''})")
    for v in described["versions"]:
        print("  " + version_line(v))
    return 0


def run_list(args: argparse.Namespace, prog: str) -> int:
    with Gateway(args.url, args.token) as gateway:
        collections = admin_list(gateway, "collections", as_json=args.json)
    for c in collections or ():
        latest = c["versions"][-1] if c["versions"] else None
        print(f"{c['name']:<24}{c['source']:<16}" + (version_line(latest) if latest else "no version"))
    return 0
