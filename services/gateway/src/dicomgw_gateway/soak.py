"""The chaos soak (`make soak`, `dicomgw stack soak`): the local stack under a steady mixed load while
faults are injected one after another and together, then an audit of what was acknowledged.

The stack is the one of `make up` (supervised by supervisord, so a killed process comes back as a
Kubernetes pod would), started on free ports in a scratch folder, with toxiproxy between the dicomgw
processes and PostgreSQL, both MinIOs and Redis. The load: several STOW-RS clients that behave like a
hospital's forwarder (retry on 503, on 0xA700 and on a broken connection, obey Retry-After), QIDO-RS
and WADO-RS readers (metadata, frames, byte-exact whole instances) and a DIMSE C-STORE client. Every
client keeps its own ledger: what it sent (SHA-256 of the bytes) and which instances the archive
acknowledged (STOW's ReferencedSOPSequence, C-STORE's Success). The audit then checks every
acknowledged instance: in the index with the SHA-256 sent, verified by the worker tier, present
byte-exact in the primary store and in the replica, and served byte-exact by WADO-RS; and it sweeps
objects without index rows (left by a process killed between its PUT and its commit).

The last line of the report reads ``soak: N acknowledged, N lost, N faults, N unexpected 5xx``; the
command exits 1 unless nothing was lost and no answer was a 5xx other than 503.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dicomgw_gateway.stack import Stack, StackConfig, free_port

DICOMGW = Path(sys.executable).parent / "dicomgw"
RETRYABLE_REASONS = range(0xA700, 0xA800)  # Out of Resources: a forwarder sends it again
ANY_TS = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAME = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


# -- the clients' ledger -------------------------------------------------------------------------
@dataclass
class Sent:
    study: str
    series: str
    sop: str
    sha256: str
    data: bytes
    via: str  # "stow" | "c-store"


@dataclass
class Ledger:
    """What the clients sent and what the archive acknowledged, by their own record."""

    sent: dict[str, Sent] = field(default_factory=dict)
    acknowledged: set[str] = field(default_factory=set)
    requests: Counter[str] = field(default_factory=Counter)
    retryable: Counter[str] = field(default_factory=Counter)  # 503, 0xA700, a broken connection
    unexpected: list[str] = field(default_factory=list)  # 5xx other than 503
    wrong: list[str] = field(default_factory=list)  # other answers a correct archive never gives

    def note_unexpected(self, what: str) -> None:
        self.unexpected.append(what)

    def acked_studies(self) -> list[str]:
        return sorted({self.sent[sop].study for sop in self.acknowledged})


def _instance(patient: str, study: str, series: str, number: int, size: int, rng: random.Random) -> bytes:
    """A small CT image (random pixels) as a Part 10 file."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID = patient, patient.replace("^", "")
    ds.StudyDate, ds.StudyTime, ds.Modality = "20261203", "120000", "CT"
    ds.SeriesNumber, ds.InstanceNumber = 1, number
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, number], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [0.5, 0.5], 1
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    pixels = np.frombuffer(rng.randbytes(size * size * 2), dtype="<u2") & 0x0FFF
    ds.PixelData = pixels.tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _multipart(parts: list[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for data in parts:
        chunks += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="application/dicom"; boundary={boundary}'


def _split(body: bytes, content_type: str) -> list[bytes]:
    """The payloads of a multipart/related answer."""
    boundary = content_type.split("boundary=", 1)[1].split(";")[0].strip().strip('"').encode()
    parts = []
    for chunk in body.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        _, _, payload = chunk.partition(b"\r\n\r\n")
        parts.append(payload[:-2] if payload.endswith(b"\r\n") else payload)
    return parts


def _uids(items: Any, tag: str) -> list[tuple[str, int | None]]:
    found = []
    for item in (items or {}).get(tag, {}).get("Value", []):
        sop = item.get("00081155", {}).get("Value", [None])[0]
        reason = item.get("00081197", {}).get("Value", [None])[0]
        if sop:
            found.append((sop, reason))
    return found


# -- the load ------------------------------------------------------------------------------------
class Load:
    """The mixed load of the soak: forwarders, readers and a DIMSE client, each with a ledger."""

    def __init__(self, stack: Stack, headers: dict[str, str], ledger: Ledger, seed: int,
                 pace: float = 0.0) -> None:
        self.stack = stack
        self.pace = pace  # seconds each forwarder waits between studies (0: back to back)
        self.url = stack.config.url
        self.ledger = ledger
        self.rng = random.Random(seed)
        self.stopping = asyncio.Event()
        self.http = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(60, connect=5),
                                      limits=httpx.Limits(max_connections=32))

    async def close(self) -> None:
        await self.http.aclose()

    def _classify(self, kind: str, resp: httpx.Response) -> bool:
        """Count an answer; True when it is a retryable refusal."""
        if resp.status_code == 503:
            self.ledger.retryable["503"] += 1
            return True
        if resp.status_code >= 500:
            self.ledger.note_unexpected(f"{kind}: {resp.status_code} {resp.text[:200]}")
            return True  # retried as a forwarder would, but counted against the archive
        return False

    def _study(self, client: str) -> list[bytes]:
        study, series = generate_uid(), generate_uid()
        count = self.rng.randint(2, 6)
        return [_instance(f"SOAK^{client}", study, series, n + 1, 256 if n == 0 else 64, self.rng)
                for n in range(count)]

    def _record(self, parts: list[bytes], via: str) -> dict[str, bytes]:
        pending = {}
        for data in parts:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            self.ledger.sent[ds.SOPInstanceUID] = Sent(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                                       ds.SOPInstanceUID,
                                                       hashlib.sha256(data).hexdigest(), data, via)
            pending[ds.SOPInstanceUID] = data
        return pending

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def forward(self, pending: dict[str, bytes], deadline: float) -> None:
        """STOW-RS until every instance is acknowledged, as a forwarder does (until the deadline)."""
        while pending and time.monotonic() < deadline:
            body, content_type = _multipart(list(pending.values()))
            self.ledger.requests["stow"] += 1
            try:
                resp = await self.http.post(f"{self.url}/studies", content=body,
                                            headers={"content-type": content_type})
            except httpx.HTTPError as exc:
                self.ledger.retryable["broken connection"] += 1
                del exc
                await asyncio.sleep(1)
                continue
            retry_after = float(resp.headers.get("retry-after", "1"))
            if self._classify("stow", resp):
                await asyncio.sleep(min(retry_after, 5))
                continue
            if resp.status_code not in (200, 202, 409):
                self.ledger.wrong.append(f"stow: {resp.status_code} {resp.text[:200]}")
                return
            answer = resp.json()
            for sop, _ in _uids(answer, "00081199"):
                if sop in pending:
                    self.ledger.acknowledged.add(sop)
                    del pending[sop]
            for sop, reason in _uids(answer, "00081198"):
                if reason in RETRYABLE_REASONS:
                    self.ledger.retryable[f"0x{reason:04X}"] += 1
                else:
                    self.ledger.wrong.append(f"stow: {sop} refused with 0x{reason or 0:04X}")
                    pending.pop(sop, None)
            if pending:
                await asyncio.sleep(min(retry_after, 5))

    async def forwarder(self, name: str) -> None:
        while not self.stopping.is_set():
            pending = self._record(self._study(name), "stow")
            await self.forward(pending, time.monotonic() + 600)
            if self.pace:
                await self._pause(self.pace)

    async def reader(self) -> None:
        """QIDO-RS and WADO-RS of what has been acknowledged: every answer must be a success or a
        503, and a whole instance must be the bytes that were sent."""
        kinds = ["studies", "series", "instances", "metadata", "frame", "instance"]
        while not self.stopping.is_set():
            acked = list(self.ledger.acknowledged)
            if not acked:
                await asyncio.sleep(0.2)
                continue
            sent = self.ledger.sent[self.rng.choice(acked)]
            kind = self.rng.choice(kinds)
            study = f"{self.url}/studies/{sent.study}"
            instance = f"{study}/series/{sent.series}/instances/{sent.sop}"
            request = {"studies": (f"{self.url}/studies", {"PatientName": "SOAK*", "limit": "20"}, None),
                       "series": (f"{study}/series", None, None),
                       "instances": (f"{self.url}/instances", {"StudyInstanceUID": sent.study}, None),
                       "metadata": (f"{study}/metadata", None, None),
                       "frame": (f"{instance}/frames/1", None, FRAME),
                       "instance": (instance, None, ANY_TS)}[kind]
            self.ledger.requests["qido" if kind in ("studies", "series", "instances") else "wado"] += 1
            try:
                resp = await self.http.get(request[0], params=request[1],
                                           headers={"accept": request[2]} if request[2] else None)
            except httpx.HTTPError:
                self.ledger.retryable["broken connection"] += 1
                await asyncio.sleep(0.5)
                continue
            if self._classify(kind, resp):
                await asyncio.sleep(0.5)
                continue
            if resp.status_code != 200:
                self.ledger.wrong.append(f"{kind} of an acknowledged instance: {resp.status_code} "
                                         f"{resp.text[:200]}")
            elif kind == "instance":
                [payload] = _split(resp.content, resp.headers["content-type"])
                if not _same(sent, payload):
                    self.ledger.wrong.append(f"instance {sent.sop} served changed")
            await asyncio.sleep(0.05)

    async def dimse_client(self) -> None:
        """A PACS forwarding by C-STORE: one association per study, sent again until every
        instance got Success."""
        while not self.stopping.is_set():
            pending = self._record(self._study("DIMSE"), "c-store")
            deadline = time.monotonic() + 600
            while pending and time.monotonic() < deadline:
                self.ledger.requests["c-store"] += len(pending)
                statuses = await asyncio.to_thread(_c_store, self.stack.config.dimse_port,
                                                   list(pending.items()))
                for sop, status in statuses.items():
                    if status in (0x0000, 0xB007):
                        self.ledger.acknowledged.add(sop)
                        pending.pop(sop)
                    elif status is None:
                        self.ledger.retryable["broken association"] += 1
                    elif status in RETRYABLE_REASONS:
                        self.ledger.retryable[f"0x{status:04X}"] += 1
                    else:
                        self.ledger.wrong.append(f"c-store: {sop} refused with 0x{status:04X}")
                        pending.pop(sop)
                if pending:
                    await asyncio.sleep(1)


def _body(data: bytes) -> bytes:
    """The data set of a Part 10 file (what C-STORE sends), without preamble and meta group."""
    meta_length = int.from_bytes(data[140:144], "little")  # (0002,0000) group length value
    return data[144 + meta_length:]


def _same(sent: Sent, data: bytes) -> bool:
    """The bytes sent (for C-STORE: its data set, behind the archive's own meta group)."""
    return data == sent.data or (sent.via == "c-store" and data.endswith(_body(sent.data)))


def _c_store(port: int, items: list[tuple[str, bytes]]) -> dict[str, int | None]:
    from pynetdicom import AE

    ae = AE(ae_title="SOAKSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    statuses: dict[str, int | None] = {sop: None for sop, _ in items}
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMGW")
    if not assoc.is_established:
        return statuses
    try:
        for sop, data in items:
            with tempfile.NamedTemporaryFile(suffix=".dcm") as f:
                f.write(data)
                f.flush()
                status = assoc.send_c_store(Path(f.name))  # a file's data set is sent as it is
            if "Status" in status:
                statuses[sop] = int(status.Status)
            if not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


# -- the faults ----------------------------------------------------------------------------------
@dataclass
class Fault:
    name: str
    inject: Callable[[], Awaitable[None]]
    heal: Callable[[], Awaitable[None]]
    seconds: float  # how long it lasts before it is healed (0: a kill, healed by the supervisor)
    target: str  # the program or proxy it acts on: one fault per target at a time


class Faults:
    """The fault catalogue, on the stack's supervisor and on toxiproxy."""

    def __init__(self, stack: Stack, seconds: float) -> None:
        self.stack = stack
        self.seconds = seconds
        self.api = f"http://127.0.0.1:{stack.config.toxiproxy_port}"

    def kill(self, program: str) -> Fault:
        async def inject() -> None:
            await asyncio.to_thread(self.stack.kill, program)

        async def heal() -> None:  # supervisord restarts it; wait until it answers again
            await asyncio.to_thread(self.stack.start, program, seconds=120)

        return Fault(f"kill -9 {program}", inject, heal, 0, program)

    def restart(self, program: str) -> Fault:
        async def inject() -> None:
            await asyncio.to_thread(self.stack.rpc().supervisor.stopProcess, program, True)

        async def heal() -> None:
            await asyncio.to_thread(self.stack.start, program, seconds=120)

        return Fault(f"{program} restart", inject, heal, 1, program)

    def away(self, program: str, what: str) -> Fault:
        fault = self.restart(program)
        return Fault(what, fault.inject, fault.heal, self.seconds, program)

    def toxic(self, proxy: str, kind: str, attributes: dict[str, int], what: str,
              toxicity: float = 1.0) -> Fault:
        name = f"soak-{kind}"

        async def inject() -> None:
            async with httpx.AsyncClient() as http:
                for stream in ("downstream", "upstream") if kind == "reset_peer" else ("downstream",):
                    resp = await http.post(f"{self.api}/proxies/{proxy}/toxics", json={
                        "name": f"{name}-{stream}", "type": kind, "stream": stream,
                        "toxicity": toxicity, "attributes": attributes})
                    resp.raise_for_status()

        async def heal() -> None:
            async with httpx.AsyncClient() as http:
                for stream in ("downstream", "upstream"):
                    await http.delete(f"{self.api}/proxies/{proxy}/toxics/{name}-{stream}")

        return Fault(what, inject, heal, self.seconds, proxy)

    def catalogue(self) -> dict[str, Fault]:
        faults = [self.kill(p) for p in ("ingest", "query", "retrieve", "worker", "relay", "dimse")]
        faults += [
            self.restart("postgres"), self.kill("postgres"), self.restart("redis"),
            self.away("minio", "primary MinIO stopped"),
            self.toxic("minio", "latency", {"latency": 400, "jitter": 200}, "primary MinIO slow"),
            self.toxic("minio", "reset_peer", {"timeout": 20}, "primary MinIO dropping connections",
                       toxicity=0.3),
            self.toxic("minio", "bandwidth", {"rate": 256}, "primary MinIO at 256 KB/s"),
            self.away("minio-replica", "replica MinIO away"),
            self.toxic("postgres", "latency", {"latency": 150, "jitter": 50}, "PostgreSQL slow"),
            self.toxic("postgres", "timeout", {"timeout": 2000}, "PostgreSQL black-holed"),
            self.toxic("redis", "reset_peer", {"timeout": 0}, "Redis resetting connections"),
        ]
        return {f.name: f for f in faults}

    def rounds(self, count: int, rng: random.Random) -> list[list[str]]:
        """Steps (fault names injected together) of ``count`` rounds: each round has every fault of
        the catalogue alone, in random order, then three random combinations of three."""
        names = list(self.catalogue())
        plan: list[list[str]] = []
        for _ in range(count):
            plan += [[n] for n in rng.sample(names, len(names))]
            plan += [rng.sample(names, 3) for _ in range(3)]
        return plan


# The short soak of `make test`: two rounds, each with process, database, store, broker and network
# faults alone and then three together.
SHORT_PLAN = [
    ["kill -9 ingest"], ["postgres restart"], ["primary MinIO dropping connections"],
    ["kill -9 worker", "replica MinIO away", "PostgreSQL slow"],
    ["Redis resetting connections"], ["kill -9 retrieve"], ["primary MinIO stopped"],
    ["kill -9 query", "redis restart", "primary MinIO slow"],
]


def _exclusive(step: list[Fault]) -> list[Fault]:
    """One fault per program or proxy within a step (a program cannot be killed and stopped at once)."""
    kept: dict[str, Fault] = {}
    for fault in step:
        kept.setdefault(fault.target, fault)
    return list(kept.values())


# -- the run -------------------------------------------------------------------------------------
@dataclass
class Injected:
    step: int
    name: str
    at: float
    healed: float
    acked_at_heal: int
    caught_up: float | None = None


@dataclass
class Report:
    seconds: float
    ledger: Ledger
    faults: list[Injected]
    audit: dict[str, Any]

    @property
    def lost(self) -> int:
        return int(self.audit["lost"])

    def lines(self) -> list[str]:
        led, a = self.ledger, self.audit
        req = led.requests
        out = [
            f"soak of {self.seconds:.0f} s of load on the local stack (supervised; toxiproxy in front of "
            "PostgreSQL, both MinIOs and Redis)",
            f"requests sent: {sum(req.values())} (STOW {req['stow']}, QIDO {req['qido']}, "
            f"WADO {req['wado']}, C-STORE {req['c-store']})",
            f"instances sent: {len(led.sent)}; acknowledged: {len(led.acknowledged)} "
            f"(STOW {sum(1 for s in led.acknowledged if led.sent[s].via == 'stow')}, C-STORE "
            f"{sum(1 for s in led.acknowledged if led.sent[s].via == 'c-store')})",
            "refused with a retryable status or a broken connection, then sent again: "
            + (", ".join(f"{k} {v}" for k, v in sorted(led.retryable.items())) or "none"),
            f"faults injected: {len(self.faults)}",
        ]
        for f in self.faults:
            catch = f"replica caught up {f.caught_up:.1f} s after" if f.caught_up is not None else \
                "replica had not caught up at the audit"
            out.append(f"  step {f.step:>2} t={f.at:6.1f} s  {f.name:<38} healed after "
                       f"{f.healed - f.at:4.1f} s; {catch}")
        caught = [f.caught_up for f in self.faults if f.caught_up is not None]
        if caught:
            out.append(f"replica catch-up after a fault: median {sorted(caught)[len(caught) // 2]:.1f} s, "
                       f"max {max(caught):.1f} s")
        out += [
            f"settled (every instance verified and replicated) {a['settle_seconds']:.1f} s after the load "
            "stopped",
            f"audit of {a['acknowledged']} acknowledged instances: {a['indexed']} indexed with the SHA-256 "
            f"sent, {a['verified']} verified, {a['primary']} byte-exact in the primary store, "
            f"{a['replica']} in the replica, {a['served']} served byte-exact; {a['compacted']} of them "
            "kept compact by then",
            f"objects without an index row (a process killed between its PUT and its commit): "
            f"{a['orphans']['found']}, of which {a['orphans']['indexed']} complete originals indexed and "
            f"{a['orphans']['removed']} removed",
            f"other wrong answers: {len(led.wrong)}" + (f" (first: {led.wrong[0]})" if led.wrong else ""),
        ]
        out += [f"  lost: {uid}" for uid in a.get("lost_uids", [])]
        out += [f"  unexpected: {u}" for u in led.unexpected[:10]]
        out.append(f"soak: {len(led.acknowledged)} acknowledged, {self.lost} lost, {len(self.faults)} "
                   f"faults, {len(led.unexpected)} unexpected 5xx")
        return out

    @property
    def passed(self) -> bool:
        a = self.audit
        n = a["acknowledged"]
        return (self.lost == 0 and not self.ledger.unexpected and not self.ledger.wrong
                and a["indexed"] == a["verified"] == a["primary"] == a["replica"] == a["served"] == n)


def soak_config(run_dir: Path, extra_env: dict[str, str] | None = None) -> StackConfig:
    return StackConfig(
        run_dir=run_dir, port=free_port(), minio_port=free_port(), replica_port=free_port(),
        redis_port=free_port(), postgres_port=free_port(), ingest_port=free_port(),
        query_port=free_port(), retrieve_port=free_port(), worker_metrics_port=free_port(),
        dimse_port=free_port(), toxiproxy_port=free_port(),
        proxy_ports={name: free_port() for name in ("postgres", "minio", "minio-replica", "redis")},
        minio_user="soak", minio_password="soak-secret-key",
        extra_env={"DICOMGW_WORKER_POLL_SECONDS": "0.2", "DICOMGW_WORKER_SWEEP_SECONDS": "30",
                   "DICOMGW_WORKER_VERIFY_CYCLE_SECONDS": "600", "DICOMGW_WORKER_LEASE_SECONDS": "15",
                   "DICOMGW_AUTH_KEY_CACHE_SECONDS": "30", "DICOMGW_WORKER_STALL_SECONDS": "20",
                   # compaction runs under the load too: originals compacted at each sweep, their
                   # verbatim copies dropped soon after, while readers read them
                   "DICOMGW_COMPACT_AFTER_SECONDS": "0", "DICOMGW_COMPACT_DROP_AFTER_SECONDS": "5",
                   **(extra_env or {})})


def create_key(config: StackConfig) -> str:
    done = subprocess.run([str(DICOMGW), "keys", "create", "soak", "--scopes",
                           "dicom.read,dicom.write,dicom.admin"],
                          env={**os.environ, **config.service_env()}, capture_output=True, text=True,
                          timeout=120, check=True)
    return done.stdout.strip().splitlines()[-1]


async def _status(http: httpx.AsyncClient, config: StackConfig) -> dict[str, Any] | None:
    try:
        resp = await http.get(f"http://127.0.0.1:{config.port}/admin/status", timeout=10)
    except httpx.HTTPError:
        return None
    return resp.json() if resp.status_code == 200 else None


async def run(stack: Stack, *, seconds: float, plan: list[list[str]] | None = None, rounds: int = 3,
              fault_seconds: float = 8, seed: int = 0, forwarders: int = 3, pace: float = 0.0,
              say: Callable[[str], None] = print) -> Report:
    """Load, faults (``plan``, or ``rounds`` random rounds), then the audit. ``pace``: seconds each
    forwarder waits between studies (a lighter load leaves a shorter backlog to audit)."""
    config = stack.config
    headers = {"Authorization": f"Bearer {await asyncio.to_thread(create_key, config)}"}
    ledger = Ledger()
    load = Load(stack, headers, ledger, seed, pace)
    rng = random.Random(seed)
    faults = Faults(stack, fault_seconds)
    catalogue = faults.catalogue()
    steps = [[catalogue[name] for name in step] for step in (plan or faults.rounds(rounds, rng))]
    injected: list[Injected] = []
    replicated: list[tuple[float, int]] = []
    started = time.monotonic()

    async def watch() -> None:
        while True:
            status = await _status(load.http, config)
            if status:
                replicated.append((time.monotonic() - started, int(status["replica"]["replicated"])))
            await asyncio.sleep(0.5)

    clients = [asyncio.create_task(load.forwarder(f"F{n}")) for n in range(forwarders)]
    clients += [asyncio.create_task(load.reader()), asyncio.create_task(load.reader()),
                asyncio.create_task(load.dimse_client())]
    watcher = asyncio.create_task(watch())
    try:
        await asyncio.sleep(min(5, seconds / 10))  # steady load first
        for number, step in enumerate(steps, 1):
            if plan is None and time.monotonic() - started > seconds:
                break  # random rounds run for the time given; an explicit plan runs whole
            step = _exclusive(step)
            at = time.monotonic() - started
            say(f"  t={at:6.1f} s  step {number}: {' + '.join(f.name for f in step)}")
            await asyncio.gather(*(f.inject() for f in step))
            await asyncio.sleep(max(f.seconds for f in step))
            await asyncio.gather(*(f.heal() for f in step))
            healed = time.monotonic() - started
            for f in step:
                injected.append(Injected(number, f.name, at, healed, len(ledger.acknowledged)))
            await asyncio.sleep(2)
        remaining = seconds - (time.monotonic() - started)
        if remaining > 0:
            await asyncio.sleep(remaining)
    finally:
        load.stopping.set()
        say("  load stopping; clients finish sending what they have not had acknowledged")
        await asyncio.wait(clients, timeout=300)
        for task in clients:
            task.cancel()
    load_seconds = time.monotonic() - started
    settle_started = time.monotonic()
    audit = await _audit(stack, load, say)
    audit["settle_seconds"] = audit.pop("settled_at") - settle_started
    watcher.cancel()
    await load.close()
    for done in injected:
        done.caught_up = next((t - done.healed for t, n in replicated
                               if t >= done.healed and n >= done.acked_at_heal), None)
    return Report(load_seconds, ledger, injected, audit)


async def _audit(stack: Stack, load: Load, say: Callable[[str], None]) -> dict[str, Any]:
    """Every acknowledged instance: indexed with its SHA-256, verified, byte-exact in both stores and
    served byte-exact; orphan objects swept."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from dicomgw import originals
    from dicomgw.config import StorageSettings
    from dicomgw.storage.s3 import S3Store

    config, ledger = stack.config, load.ledger
    acked = [ledger.sent[sop] for sop in sorted(ledger.acknowledged)]
    say(f"  audit of {len(acked)} acknowledged instances")
    # first the archive's own sweep of objects without index rows (nothing is in flight now)
    orphans = await _sweep_orphans(stack)
    # then the stack settles: every instance (those the sweep indexed too) verified and replicated
    # (for as long as the worker tier makes progress: a long soak leaves a backlog to work through)
    progress, last_progress = (-1, -1), time.monotonic()
    while time.monotonic() - last_progress < 120:
        status = await _status(load.http, config)
        if status and status["pending"] == 0 and status["replica"]["pending"] == 0 and \
                status["verified"] >= status["instances"] and \
                status["replica"]["replicated"] >= status["instances"]:
            break
        if status and (status["verified"], status["replica"]["replicated"]) != progress:
            progress, last_progress = (status["verified"], status["replica"]["replicated"]), time.monotonic()
        await asyncio.sleep(1)
    settled_at = time.monotonic()
    # compaction runs only when no verification or replication waits, so under a steady load it may
    # not have had its turn yet: give it its next sweeps (it compacts while the audit reads too)
    compact_from = time.monotonic()
    while time.monotonic() - compact_from < 90:
        status = await _status(load.http, config)
        storage = status.get("storage") if status else None
        if storage and int(storage["not_compacted_yet"]) < int(storage["originals"]):
            break
        await asyncio.sleep(1)
    # the index, read directly (the real ports, not through the fault proxy)
    engine = create_async_engine(
        f"postgresql+asyncpg://dicomgw@127.0.0.1:{config.postgres_port}/dicomgw")
    try:
        async with engine.connect() as conn:
            rows = {r.sop_instance_uid: r for r in (await conn.execute(text(
                "SELECT sop_instance_uid, object_key, sha256, verify_status, replica_status, stored_form, "
                "replica_form FROM instances WHERE partition_name = 'default'"))).all()}
    finally:
        await engine.dispose()
    indexed, verified = set(), set()
    for sent in acked:
        row = rows.get(sent.sop)
        if row is not None and (sent.via == "c-store" or bytes(row.sha256).hex() == sent.sha256):
            indexed.add(sent.sop)
            if row.verify_status in ("verified", "repaired"):
                verified.add(sent.sop)

    async def current_form(sop: str, column: str) -> str:
        """The form the index says now (compaction goes on during the audit, and drops verbatim
        copies a few seconds after it commits)."""
        engine = create_async_engine(
            f"postgresql+asyncpg://dicomgw@127.0.0.1:{config.postgres_port}/dicomgw")
        try:
            async with engine.connect() as conn:
                return str((await conn.execute(text(
                    f"SELECT {column} FROM instances WHERE partition_name = 'default' "
                    "AND sop_instance_uid = :sop"), {"sop": sop})).scalar())
        finally:
            await engine.dispose()

    async def in_bucket(port: int, bucket: str, column: str) -> set[str]:
        """The instances whose copy in the bucket, in the form the row says, gives back their bytes."""
        store = await S3Store.open(StorageSettings(
            backend="s3", endpoint_url=f"http://127.0.0.1:{port}", bucket=bucket,
            access_key=config.minio_user, secret_key=config.minio_password, create_bucket=False))
        good = set()
        try:
            for sent in acked:
                if sent.sop in rows:
                    row = rows[sent.sop]
                    for attempt in range(2):  # the second time in the form the row says by then
                        form = getattr(row, column) if attempt == 0 else await current_form(sent.sop, column)
                        with contextlib.suppress(Exception):  # absent: not counted
                            if _same(sent, await originals.read(store, originals.Copy(row.object_key, form))):
                                good.add(sent.sop)
                                break
        finally:
            await store.close()
        return good

    primary = await in_bucket(config.minio_port, "dicom-originals", "stored_form")
    replica = await in_bucket(config.replica_port, "dicom-replica", "replica_form")
    # served byte-exact: each acknowledged study retrieved whole through the router
    served = set()
    by_study: dict[str, list[Sent]] = {}
    for sent in acked:
        by_study.setdefault(sent.study, []).append(sent)
    for study, instances in by_study.items():
        resp = await load.http.get(f"{config.url}/studies/{study}", headers={"accept": ANY_TS})
        if resp.status_code != 200:
            continue
        payloads = _split(resp.content, resp.headers["content-type"])
        served |= {sent.sop for sent in instances if any(_same(sent, p) for p in payloads)}
    # lost: acknowledged, but not indexed with its bytes, kept byte-exact and served byte-exact
    lost = [sent.sop for sent in acked if not (sent.sop in indexed and sent.sop in primary
                                               and sent.sop in served)]
    compacted = sum(1 for sent in acked if sent.sop in rows and rows[sent.sop].stored_form == "compact")
    return {"acknowledged": len(acked), "indexed": len(indexed), "verified": len(verified),
            "compacted": compacted,
            "primary": len(primary), "replica": len(replica), "served": len(served),
            "orphans": orphans, "lost": len(lost), "lost_uids": lost[:20], "settled_at": settled_at}


async def _sweep_orphans(stack: Stack) -> dict[str, int]:
    """Objects without an index row, by the archive's own sweep (`dicomgw orphans sweep`)."""
    done = await asyncio.to_thread(
        subprocess.run, [str(DICOMGW), "orphans", "sweep", "--grace", "0", "--json"],
        env={**os.environ, **stack.config.service_env()}, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"the orphan sweep failed: {done.stderr}")
    report = json.loads(done.stdout)
    return {key: int(report.get(key, 0)) for key in ("found", "indexed", "removed")}


def soak(seconds: float, rounds: int, fault_seconds: float, seed: int, keep: Path | None = None,
         plan: list[list[str]] | None = None, forwarders: int = 3, pace: float = 0.0,
         say: Callable[[str], None] = print) -> Report:
    """Start a stack, soak it, audit, stop it."""
    # the C-STORE client's association chatter (and its refused associations while dimse restarts)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    run_dir = keep or Path(tempfile.mkdtemp(prefix="dicomgw-soak-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(soak_config(run_dir))
    progress = (run_dir / "soak.log").open("a")

    def tell(line: str) -> None:  # to the caller, and a timestamped copy in run_dir/soak.log
        say(line)
        progress.write(f"{time.strftime('%H:%M:%S')} {line}\n")
        progress.flush()

    tell(f"starting the stack in {run_dir}")
    stack.up()
    try:
        tell(f"load for {seconds:.0f} s, faults from seed {seed}")
        report = asyncio.run(run(stack, seconds=seconds, plan=plan, rounds=rounds,
                                 fault_seconds=fault_seconds, seed=seed, forwarders=forwarders, pace=pace,
                                 say=tell))
        progress.write("\n".join(report.lines()) + "\n")
        return report
    finally:
        stack.down()
        if keep is None:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            tell(f"the stack's folder (logs in {run_dir / 'logs'}) is kept")
        progress.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=300, help="how long the load runs (default 300)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="fault rounds: each has every fault alone, then three combinations")
    parser.add_argument("--fault-seconds", type=float, default=8, help="how long each lasting fault lasts")
    parser.add_argument("--seed", type=int, default=None, help="the fault schedule's seed (default: random)")
    parser.add_argument("--short", action="store_true",
                        help="the short plan of make test (two rounds of a few faults), not random rounds")
    parser.add_argument("--keep", type=Path, default=None, help="keep the stack's folder (logs) here")


def _stop_on_sigterm(*_: Any) -> None:
    raise SystemExit(143)  # so that the stack is taken down (soak's finally), not left running


def main(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    report = soak(args.seconds, args.rounds, args.fault_seconds, seed, args.keep,
                  plan=SHORT_PLAN if args.short else None)
    print("\n".join(report.lines()))
    return 0 if report.passed else 1
