"""Copying one study from an Orthanc PACS to a DICOMweb gateway (backfill), in bounded batches.

Shared by `dicomgw pacs import` (in-process) and the worker tier's `dicomgw.import_study` task. A study
whose instances the gateway already holds is skipped, so running an import again resumes it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx

BATCH = 16


@dataclass
class ImportTally:
    studies: int = 0
    skipped: int = 0
    imported: int = 0
    instances: int = 0
    failed: int = 0


async def import_study(orthanc_url: str, auth: tuple[str, str] | None, gateway: str, study_id: str,
                        tally: ImportTally, limit: asyncio.Semaphore, token: str | None = None) -> None:
    """``auth``: Orthanc's basic-auth credentials; ``token``: the gateway's API key or access token."""
    gateway_headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with limit, httpx.AsyncClient(timeout=300, auth=auth) as client:
        study = (await client.get(f"{orthanc_url}/studies/{study_id}")).json()
        uid = study["MainDicomTags"]["StudyInstanceUID"]
        instances = (await client.get(f"{orthanc_url}/studies/{study_id}/instances")).json()
        held = await client.get(f"{gateway}/studies/{uid}/instances", headers=gateway_headers,
                                params={"includefield": "00080018", "limit": 100000})
        if held.status_code in (401, 403):
            raise PermissionError(f"the gateway refused the credential: HTTP {held.status_code}")
        known = {i["00080018"]["Value"][0] for i in held.json()} if held.status_code == 200 else set()
        wanted = [i for i in instances if i["MainDicomTags"]["SOPInstanceUID"] not in known]
        if not wanted:
            tally.skipped += 1
            return
        # batches of BATCH instances: memory stays bounded however large the study
        for start in range(0, len(wanted), BATCH):
            await send_batch(client, orthanc_url, gateway, wanted[start : start + BATCH], tally,
                             gateway_headers)
        tally.imported += 1


async def send_batch(client: httpx.AsyncClient, orthanc_url: str, gateway: str,
                      batch: list[dict[str, object]], tally: ImportTally,
                      gateway_headers: dict[str, str] | None = None) -> None:
    boundary = "dicomgw-import"
    chunks = []
    for instance in batch:
        data = (await client.get(f"{orthanc_url}/instances/{instance['ID']}/file")).content
        chunks += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    resp = await client.post(
        f"{gateway}/studies", content=b"".join(chunks),
        headers={**(gateway_headers or {}),
                 "content-type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    body = resp.json() if resp.headers.get("content-type", "").endswith("json") else {}
    tally.instances += len(body.get("00081199", {}).get("Value", []))
    tally.failed += len(body.get("00081198", {}).get("Value", [])) if body else len(batch)


