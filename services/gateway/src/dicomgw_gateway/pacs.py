"""`dicomgw pacs connect|import`: hook an Orthanc PACS to the gateway and backfill what it holds.

connect: registers the gateway as a DICOMweb server in Orthanc and installs a Lua rule that sends every
new stable study by STOW-RS (an Orthanc job; a failed one is made again up to 5 times at once, and again
each time a later study arrives, so a gateway away for hours loses nothing).
import: copies the studies Orthanc holds (optionally --since a StudyDate) to the gateway, study by study;
a study the gateway already holds in full is skipped, so a re-run resumes where the last one stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os

import httpx
from pyorthanc import Orthanc
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from dicomgw.pacs_import import ImportTally, import_study

SERVER_NAME = "dicomgw"

FORWARDING_RULE = """
-- dicomgw: forward every new stable study to the gateway by STOW-RS, retrying failed forwards.
-- A failed STOW job is not resubmitted: Orthanc 1.10 resubmits it without its instances (an empty
-- request). A new job is made for the study instead.
dicomgwStudyOf = dicomgwStudyOf or {}  -- job -> the study it forwards
dicomgwTries = dicomgwTries or {}      -- study -> failed forwards in a row
dicomgwWaiting = dicomgwWaiting or {}  -- studies whose quick retries are spent

function dicomgwForward(studyId)
  local body = '{"Resources": ["' .. studyId .. '"], "Synchronous": false, "Priority": 0}'
  local job = ParseJson(RestApiPost('%(root)s/servers/%(server)s/stow', body))
  dicomgwStudyOf[job['ID']] = studyId
end

function OnStableStudy(studyId, tags, metadata)
  dicomgwForward(studyId)
  -- Orthanc 1.10 has no timer for Lua: the next study to arrive is the clock. Studies whose
  -- forwarding gave up while the gateway was away go again now.
  for waiting, _ in pairs(dicomgwWaiting) do
    dicomgwWaiting[waiting] = nil
    dicomgwTries[waiting] = 0
    dicomgwForward(waiting)
  end
end

function OnJobFailure(jobId)
  local studyId = dicomgwStudyOf[jobId]
  if studyId ~= nil then
    dicomgwStudyOf[jobId] = nil
    local tries = (dicomgwTries[studyId] or 0) + 1
    dicomgwTries[studyId] = tries
    if tries <= 5 then
      dicomgwForward(studyId)
    else
      dicomgwWaiting[studyId] = true
    end
  end
end

function OnJobSuccess(jobId)
  local studyId = dicomgwStudyOf[jobId]
  if studyId ~= nil then
    dicomgwStudyOf[jobId] = nil
    dicomgwTries[studyId] = nil
  end
end
"""


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    pacs = sub.add_parser("pacs", help="connect an Orthanc PACS: forwarding rule and backfill")
    actions = pacs.add_subparsers(dest="pacs_command", required=True)
    connect = actions.add_parser("connect", help="register the gateway in Orthanc and forward new studies")
    imp = actions.add_parser("import", help="backfill the studies Orthanc holds")
    for p in (connect, imp):
        p.add_argument("--orthanc", required=True, help="Orthanc REST URL, e.g. http://orthanc:8042")
        p.add_argument("--gateway", required=True, help="the gateway's DICOMweb root")
        p.add_argument("--orthanc-user")
        p.add_argument("--orthanc-password")
        p.add_argument("--token", default=os.environ.get("DICOMGW_TOKEN"),
                       help="the gateway's API key (dicomgw keys create; default: $DICOMGW_TOKEN)")
    connect.add_argument("--orthanc-dicomweb-root", default="/dicom-web",
                         help="Orthanc's DicomWeb.Root (default /dicom-web)")
    connect.add_argument("--print-lua", action="store_true",
                         help="only print the Lua rule (for Orthanc's LuaScripts configuration)")
    imp.add_argument("--since", help="only studies with StudyDate on or after YYYYMMDD")
    imp.add_argument("--concurrency", type=int, default=2)
    imp.add_argument("--via-worker", action="store_true",
                     help="queue one task per study to the worker tier (DICOMGW_WORKER_BROKER_URL) "
                          "and follow their progress, instead of copying in this process")
    imp.add_argument("--timeout", type=float, default=3600, help="with --via-worker: how long to wait")
    connect.set_defaults(func=run_connect)
    imp.set_defaults(func=run_import)


def _orthanc(args: argparse.Namespace) -> Orthanc:
    if args.orthanc_user:
        return Orthanc(args.orthanc, username=args.orthanc_user, password=args.orthanc_password or "")
    return Orthanc(args.orthanc)


def lua_rule(server: str = SERVER_NAME, root: str = "/dicom-web") -> str:
    return FORWARDING_RULE % {"server": server, "root": root.rstrip("/")}


def run_connect(args: argparse.Namespace) -> int:
    console = Console(soft_wrap=True)
    if args.print_lua:
        print(lua_rule(root=args.orthanc_dicomweb_root))
        return 0
    orthanc = _orthanc(args)
    # the DICOMweb plugin's server registry: chunked transfer off for the widest compatibility
    server: dict[str, object] = {"Url": args.gateway.rstrip("/") + "/", "HasDelete": False,
                                 "ChunkedTransfers": False}
    if args.token:
        # the plugin sends these headers with every request to this server (STOW-RS included)
        server["HttpHeaders"] = {"Authorization": f"Bearer {args.token}"}
    base = args.orthanc.rstrip("/")
    root = args.orthanc_dicomweb_root.rstrip("/")
    resp = orthanc.put(f"{base}{root}/servers/{SERVER_NAME}", json=server)
    if resp.status_code >= 400:
        console.print(f"Orthanc refused the DICOMweb server registration: HTTP {resp.status_code} "
                      "(is the DICOMweb plugin loaded, with DicomWeb.ServersInDatabase true?)")
        return 1
    installed = orthanc.post(f"{base}/tools/execute-script", content=lua_rule(root=root).encode())
    if installed.status_code >= 400:
        console.print("Orthanc does not run Lua from its REST API (ExecuteLuaEnabled is off).\n"
                      "Add this rule to a file listed in Orthanc's LuaScripts configuration:\n")
        print(lua_rule(root=root))
        return 1
    console.print(f"Orthanc forwards every new stable study to {args.gateway} by STOW-RS "
                  f"(DICOMweb server '{SERVER_NAME}').")
    return 0


def run_import(args: argparse.Namespace) -> int:
    console = Console(soft_wrap=True)
    auth = (args.orthanc_user, args.orthanc_password or "") if args.orthanc_user else None
    orthanc = _orthanc(args)
    base = args.orthanc.rstrip("/")
    if args.since:
        found = orthanc.post(f"{base}/tools/find", json={"Level": "Study",
                                                         "Query": {"StudyDate": f"{args.since}-"}}).json()
    else:
        found = orthanc.get(f"{base}/studies").json()
    tally = ImportTally(studies=len(found))
    gateway = args.gateway.rstrip("/")
    if args.via_worker:
        return _import_via_worker(args, console, found, auth, gateway)

    async def main() -> None:
        limit = asyncio.Semaphore(max(1, args.concurrency))
        columns = [TextColumn("[bold]importing"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("studies")]
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("import", total=len(found))

            async def one(study_id: str) -> None:
                try:
                    await import_study(args.orthanc.rstrip("/"), auth, gateway, study_id, tally, limit,
                                       args.token)
                except (httpx.HTTPError, PermissionError):
                    tally.failed += 1
                progress.advance(task)

            await asyncio.gather(*(one(s) for s in found))

    asyncio.run(main())
    console.print(json.dumps({"studies": tally.studies, "imported": tally.imported,
                              "already_present": tally.skipped, "instances": tally.instances,
                              "failed": tally.failed}))
    return 1 if tally.failed else 0


def _import_via_worker(args: argparse.Namespace, console: Console, found: list[str],
                       auth: tuple[str, str] | None, gateway: str) -> int:
    """Queue a task per study, then follow the gateway until it holds every instance Orthanc has."""
    import time

    from dicomgw_worker.celery_app import celery

    base = args.orthanc.rstrip("/")
    expected: dict[str, int] = {}
    gateway_headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    with httpx.Client(timeout=60, auth=auth) as client:
        for study_id in found:
            study = client.get(f"{base}/studies/{study_id}").json()
            instances = client.get(f"{base}/studies/{study_id}/instances").json()
            expected[study["MainDicomTags"]["StudyInstanceUID"]] = len(instances)
            celery.send_task("dicomgw.import_study", args=[base, study_id, gateway,
                                                           list(auth) if auth else None, args.token])
        done: set[str] = set()
        deadline = time.monotonic() + args.timeout
        columns = [TextColumn("[bold]importing (worker tier)"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("studies")]
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("import", total=len(expected))
            while len(done) < len(expected) and time.monotonic() < deadline:
                for uid, count in expected.items():
                    if uid in done:
                        continue
                    held = client.get(f"{gateway}/studies/{uid}/instances", headers=gateway_headers,
                                      params={"includefield": "00080018", "limit": 100000})
                    if held.status_code == 200 and len(held.json()) >= count:
                        done.add(uid)
                        progress.advance(task)
                time.sleep(0.5)
    console.print(json.dumps({"studies": len(expected), "complete": len(done),
                              "incomplete": len(expected) - len(done)}))
    return 0 if len(done) == len(expected) else 1
