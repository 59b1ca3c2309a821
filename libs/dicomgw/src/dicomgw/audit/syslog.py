"""Audit events to a hospital's audit record repository as RFC 5424 syslog (IHE ATNA, ITI-20).

Each event is one message: PRI 85 (facility 10 security/authorization, severity 5 notice), version 1,
the event's time, this host, APP-NAME ``dicomgw``, MSGID ``IHE+RFC-3881`` and the PS3.15 A.5
AuditMessage XML as MSG (UTF-8, with the BOM RFC 5424 asks for). ``udp://host:port`` sends one
datagram per message (RFC 5426); ``tcp://host:port`` octet-counted frames (RFC 6587 3.4.1) over one
connection per batch.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Sequence
from datetime import UTC
from urllib.parse import urlsplit

from dicomgw.audit.events import AuditEvent, to_xml

PRI = 10 * 8 + 5
MSGID = "IHE+RFC-3881"
BOM = "\ufeff"


def rfc5424(event: AuditEvent, source_id: str, hostname: str | None = None) -> bytes:
    at = event.at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    host = (hostname or socket.gethostname() or "-")[:255]
    header = f"<{PRI}>1 {at} {host} dicomgw {os.getpid()} {MSGID} -"
    return f"{header} {BOM}{to_xml(event, source_id)}".encode()


class SyslogSender:
    def __init__(self, url: str, source_id: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("udp", "tcp") or not parts.hostname:
            raise ValueError(f"audit syslog URL {url!r}: use udp://host:port or tcp://host:port")
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = parts.port or (514 if parts.scheme == "udp" else 601)
        self.source_id = source_id

    async def send(self, events: Sequence[AuditEvent]) -> None:
        messages = [rfc5424(e, self.source_id) for e in events]
        if not messages:
            return
        if self.scheme == "udp":
            await asyncio.to_thread(self._send_udp, messages)
            return
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 10)
        try:
            writer.write(b"".join(b"%d %s" % (len(m), m) for m in messages))
            await asyncio.wait_for(writer.drain(), 10)
        finally:
            writer.close()
            await writer.wait_closed()

    def _send_udp(self, messages: list[bytes]) -> None:
        family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family[0], socket.SOCK_DGRAM) as sock:
            for message in messages:
                sock.sendto(message, family[4])
