"""The DIMSE front door: a storage SCP (C-STORE, C-ECHO, Storage Commitment) storing by the STOW-RS path.

Most PACS forward only by DICOM networking. Each received instance is stored exactly as it was sent
(the dataset bytes as received, behind a File Meta Information group naming the negotiated transfer
syntax), by the same pipeline as STOW-RS, and the C-STORE is answered with Success only after the
original is durable and indexed; a refused instance gets the same reason code STOW-RS would give, and
nothing of it is stored. Associations from AE titles not on the allowed list are rejected.

The same AE answers Storage Commitment requests (PS3.4 Annex J) with the SCP in commitment.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import ssl
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomgw.audit import AuditEvent
from dicomgw.config import Settings
from dicomgw.ingest import DAMAGED_WARNING, store_parts
from dicomgw.multipart import SpooledPart
from dicomgw.runtime import Runtime, open_runtime
from dicomgw_dimse.commitment import STORAGE_COMMITMENT, StorageCommitmentSCP

log = logging.getLogger("dicomgw.dimse")

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
ALL_TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92",
    "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.100",
    "1.2.840.10008.1.2.4.101", "1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.103",
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",
]


class StorageSCP:
    """C-STORE handler bridging pynetdicom's threads to the runtime's event loop."""

    def __init__(self, runtime: Runtime, loop: asyncio.AbstractEventLoop) -> None:
        self.runtime = runtime
        self.loop = loop

    def _spool(self, data: bytes) -> SpooledPart:
        fd, name = tempfile.mkstemp(dir=self.runtime.settings.spool_path, suffix=".dimse")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return SpooledPart(0, Path(name), len(data), hashlib.sha256(data).digest(),
                           {"content-type": "application/dicom"})

    async def _store(self, part: SpooledPart, peer: tuple[str, str]) -> int:
        async def one() -> AsyncIterator[SpooledPart]:
            yield part

        outcome = await store_parts(self.runtime, one(), None)
        [result] = outcome.results
        self._audit("transferred", peer, outcome=4 if result.error else 0,
                    studies=(result.study_instance_uid,) if result.study_instance_uid else (),
                    detail=result.error.detail if result.error else "")
        if result.error is not None:
            log.info("C-STORE refused (0x%04X): %s", result.error.failure_reason, result.error.detail)
            return result.error.failure_reason
        if result.damaged:
            return DAMAGED_WARNING  # stored as received; a warning status, as STOW-RS says it too
        return SUCCESS

    def _audit(self, event: str, peer: tuple[str, str], *, outcome: int,
               studies: tuple[str, ...] = (), detail: str = "", method: str = "C-STORE") -> None:
        """An audit event of the DIMSE front door: who is the calling AE title (runs on the loop)."""
        if not self.runtime.settings.audit.enabled:
            return
        ae_title, address = peer
        self.runtime.audit.record(AuditEvent(
            event=event, action="C" if event == "transferred" else "E", outcome=outcome, who=ae_title,
            who_kind="dicom-ae", source=address, method=method, route="DIMSE", studies=studies,
            detail=detail))

    @staticmethod
    def _peer(event: Any) -> tuple[str, str]:
        requestor = event.assoc.requestor
        title = requestor.ae_title
        title = title.decode(errors="replace") if isinstance(title, bytes) else str(title)
        return title.strip(), str(requestor.address)

    def handle_store(self, event: Any) -> int:
        try:
            # the dataset exactly as the peer encoded it, behind a meta group for its transfer syntax
            data = bytes(event.encoded_dataset(include_meta=True))
            part = self._spool(data)
        except Exception:
            log.exception("C-STORE could not be received")
            return OUT_OF_RESOURCES
        try:
            return asyncio.run_coroutine_threadsafe(self._store(part, self._peer(event)),
                                                    self.loop).result(timeout=600)
        except Exception:
            log.exception("C-STORE could not be stored")
            part.discard()
            return OUT_OF_RESOURCES

    def handle_rejected(self, event: Any) -> None:
        """An association refused (a calling AE title not allowed): a failed authentication."""
        peer = self._peer(event)
        self.loop.call_soon_threadsafe(lambda: self._audit(
            "authentication", peer, outcome=4, detail="association rejected: calling AE title not allowed"))


def make_ae(settings: Settings) -> AE:
    ae = AE(ae_title=settings.dimse.ae_title)
    ae.maximum_pdu_size = settings.dimse.max_pdu
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    ae.add_supported_context(STORAGE_COMMITMENT)
    if settings.dimse.allowed_aes:
        ae.require_calling_aet = list(settings.dimse.allowed_aes)
    return ae


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server side of DICOM TLS when a certificate is configured (TLS 1.2 at least, as BCP 195
    asks); with a CA file the peer's certificate is required and checked against it."""
    dimse = settings.dimse
    if not dimse.tls_cert_file:
        return None
    if not dimse.tls_key_file:
        raise ValueError("DICOMGW_DIMSE_TLS_CERT_FILE needs DICOMGW_DIMSE_TLS_KEY_FILE")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(dimse.tls_cert_file), str(dimse.tls_key_file))
    if dimse.tls_ca_file:
        context.load_verify_locations(cafile=str(dimse.tls_ca_file))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@contextlib.asynccontextmanager
async def dimse_front_door(runtime: Runtime) -> AsyncIterator[None]:
    """Run the SCP beside an app for its lifetime (when a DIMSE port is configured)."""
    settings = runtime.settings
    if not settings.dimse.port:
        yield
        return
    loop = asyncio.get_running_loop()
    scp = StorageSCP(runtime, loop)
    commitment = StorageCommitmentSCP(runtime, loop, scp._audit, scp._peer)
    ae = make_ae(settings)
    context = tls_context(settings)
    server = ae.start_server((settings.dimse.host, settings.dimse.port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, scp.handle_store),
                                           (evt.EVT_REJECTED, scp.handle_rejected),
                                           (evt.EVT_N_ACTION, commitment.handle_n_action)],
                             ssl_context=context)
    log.info("DIMSE storage SCP listening", extra={"ae_title": settings.dimse.ae_title,
                                                   "port": settings.dimse.port,
                                                   "tls": context is not None,
                                                   "commitment_peers": len(commitment.peers)})
    try:
        yield
    finally:
        await asyncio.to_thread(server.shutdown)
        await commitment.close()


async def _serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with open_runtime(settings, migrate=settings.index.migrate) as runtime:
        async with runtime.audit.running(), dimse_front_door(runtime):
            print(f"dicomgw DIMSE storage SCP {settings.dimse.ae_title} at "
                  f"{settings.dimse.host}:{settings.dimse.port}", flush=True)
            await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dicomgw-dimse", description=__doc__)
    parser.add_argument("--port", type=int, default=None, help="default: $DICOMGW_DIMSE_PORT or 11112")
    parser.add_argument("--host", default=None)
    args = parser.parse_args(argv)
    from dicomgw.logs import configure_logging

    settings = Settings()
    settings.dimse.port = args.port or settings.dimse.port or 11112
    if args.host:
        settings.dimse.host = args.host
    configure_logging(settings.log_level)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    asyncio.run(_serve(settings))
    return 0
