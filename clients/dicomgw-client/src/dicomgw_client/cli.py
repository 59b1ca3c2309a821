"""The ``dicomgw-client`` command, what a research workstation runs: ``dicomgw-client pull NAME DEST``,
``dicomgw-client upload FOLDER``, ``dicomgw-client share create|status|list|review|publish|pull``.

The server's ``dicomgw share ...`` and ``dicomgw upload`` are the same commands: they take their
arguments and their runs from here (``dicomgw_client.share``, ``dicomgw_client.upload``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dicomgw_client.errors import ClientError
from dicomgw_client.progress import ProgressLine
from dicomgw_client.pull import PullResult, pull

EMBEDDED_URL = "http://127.0.0.1:8080/dicom-web"
PULL_HELP = "download a collection version and verify every file against its manifest"
PULL_DESCRIPTION = """\
Download a complete version of a research collection into DEST, several files at once, each checked
against the manifest's SHA-256 as it arrives, and write DEST/manifest.parquet and DEST/manifest.csv:
the version's manifest with `path` the local file (relative to DEST), so that a pipeline reads what
it pulled from the manifest. Run it again to resume: files already in DEST with the right bytes are
kept (DEST/.dicomgw-pull records what was verified), only what is missing or damaged is fetched. Any
complete version can be pulled, at any time, with the same bytes.

    dicomgw-client pull mr-brain-2024 ./mr-brain-2024 --version 1 \\
        --layout '{patient_id}/{study_instance_uid}/{series_instance_uid}/{sop_instance_uid}.dcm'

The key needs dicom.read or dicom.read:NAME.
"""


def add_pull_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of a pull, but the connection's (``--url``, ``--token``)."""
    parser.add_argument("name", help="the collection")
    parser.add_argument("dest", type=Path, help="the folder to pull into (made when absent)")
    parser.add_argument("--version", default="latest",
                        help="a complete version's number (default: the latest)")
    parser.add_argument("--layout", default=None,
                        help="where each instance goes in DEST: a template over the manifest's columns, "
                             "e.g. '{patient_id}/{series_instance_uid}/{sop_instance_uid}.dcm' (default: "
                             "'{path}', the manifest's own path); each value is one folder or file name "
                             "(a '/' in it becomes '_', an empty value '_')")
    parser.add_argument("--nifti", action="store_true",
                        help="also the version's NIfTI volumes and sidecars (nifti/, listed in volumes.csv)")
    parser.add_argument("--concurrency", type=int, default=8, help="files downloaded at once (default: 8)")
    parser.add_argument("--rehash", action="store_true",
                        help="hash every file already in DEST again instead of trusting the record of an "
                             "earlier pull (same size, modification and change times)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("DICOMGW_URL") or EMBEDDED_URL,
                        help=f"the gateway's DICOMweb root (default: $DICOMGW_URL, else {EMBEDDED_URL})")
    parser.add_argument("--token", default=os.environ.get("DICOMGW_TOKEN"),
                        help="bearer token or API key (default: $DICOMGW_TOKEN)")


def summary(result: PullResult) -> str:
    volumes = f" and {result.volumes} NIfTI files" if result.volumes else ""
    lines = [f"pulled {result.collection} version {result.version}: {result.instances} instances{volumes} "
             f"into {result.dest}, every instance verified against the manifest's SHA-256",
             f"  {result.fetched} files fetched ({result.bytes_fetched / 1e6:.1f} MB), {result.present} "
             "already there" + (f", {result.repaired} damaged ones replaced" if result.repaired else ""),
             f"  manifest: {result.dest / 'manifest.parquet'} (SHA-256 {result.manifest_sha256})"]
    return "\n".join(lines)


def run_pull(args: argparse.Namespace, prog: str = "dicomgw-client") -> int:
    """Pull as ``args`` say (``add_pull_arguments`` and ``--url``/``--token``); the exit status."""
    try:
        result = pull(args.url, args.name, args.dest, version=args.version, layout=args.layout,
                      nifti=args.nifti, token=args.token, concurrency=args.concurrency, rehash=args.rehash,
                      progress=None if args.quiet else ProgressLine())
    except (ClientError, ValueError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; the same command resumes where this one stopped", file=sys.stderr)
        return 130
    print(summary(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    from dicomgw_client import share, upload  # they use this module's connection arguments

    parser = argparse.ArgumentParser(prog="dicomgw-client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    pull_parser = commands.add_parser("pull", help=PULL_HELP, description=PULL_DESCRIPTION,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pull_arguments(pull_parser)
    add_connection_arguments(pull_parser)
    pull_parser.set_defaults(func=run_pull)
    upload.add_parser(commands)
    share.add_parser(commands)
    args = parser.parse_args(argv)
    return int(args.func(args))
