"""`dicomgw serve` with several processes on one listening socket, each taking its share of connections.

uvicorn's own workers each accept every connection waiting on the shared socket at once, so the few
long-lived connections of a busy client (four parallel STOW-RS senders, OHIF's six) often all land in
the process that woke first, and the other cores idle: STOW throughput varied 1.6x from run to run with
the same corpus. Here every process is woken for a waiting connection; each publishes how many
connections it serves in a small shared array, and one serving more than the least busy live process
waits before it tries to accept, so that the least busy one takes the connection. The wait is capped:
a least busy process stuck in a long computation delays a new connection by that much at most.

Run by `dicomgw serve` (it execs ``python -m dicomgw_gateway.workers``): the supervisor imports
uvicorn and nothing of the app; only the worker processes load it.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import sys
from collections.abc import Iterable
from typing import Any

import uvicorn
from uvicorn.supervisors import multiprocess

from dicomgw.processes import pid_alive

# pause before an accept per connection served beyond the least busy process's, and its cap: long
# enough for the least busy process to be scheduled on a loaded machine, short enough not to matter
# for a connection that is then kept open
PAUSE_PER_EXCESS = 0.010
PAUSE_CAP = 0.050


def pause_before_accept(mine: int, others: Iterable[int]) -> float:
    """No pause for a process serving no more than every other; otherwise longer the busier it is."""
    least = min(others, default=mine)
    return min(PAUSE_PER_EXCESS * max(mine - least, 0), PAUSE_CAP)


class Loads:
    """Connections served per live worker process, in memory shared by the supervisor's workers.

    Each slot holds a process id and its connection count; a worker claims a free slot (or one whose
    process is gone: a killed worker cannot free its own) when it starts.
    """

    def __init__(self, slots: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.array: Any = ctx.Array("q", 2 * slots)  # ctypes values: typeshed types them loosely
        self.slot = -1

    def claim(self) -> None:
        with self.array.get_lock():
            values = self.array.get_obj()
            for slot in range(len(values) // 2):
                pid = values[2 * slot]
                if pid == 0 or not pid_alive(pid):
                    values[2 * slot], values[2 * slot + 1] = os.getpid(), 0
                    self.slot = slot
                    return
        # more processes than slots (never with uvicorn's supervisor): serve without sharing

    def release(self) -> None:
        if self.slot >= 0:
            values = self.array.get_obj()
            values[2 * self.slot], values[2 * self.slot + 1] = 0, 0
            self.slot = -1

    def publish(self, connections: int) -> None:
        if self.slot >= 0:
            self.array.get_obj()[2 * self.slot + 1] = connections

    def others(self) -> list[int]:
        """The connection counts of the other live processes (a dead one's slot is freed)."""
        if self.slot < 0:
            return []
        values = self.array.get_obj()
        counts = []
        for slot in range(len(values) // 2):
            pid, count = values[2 * slot], values[2 * slot + 1]
            if pid == 0 or slot == self.slot:
                continue
            if count < values[2 * self.slot + 1] and not pid_alive(pid):  # only a rival is checked
                with self.array.get_lock():
                    if values[2 * slot] == pid:
                        values[2 * slot], values[2 * slot + 1] = 0, 0
                continue
            counts.append(count)
        return counts


class _CountedConnections(set[Any]):
    """uvicorn's set of open connections, publishing its size on every change."""

    def __init__(self, loads: Loads) -> None:
        super().__init__()
        self._loads = loads

    def add(self, element: Any) -> None:
        super().add(element)
        self._loads.publish(len(self))

    def discard(self, element: Any) -> None:
        super().discard(element)
        self._loads.publish(len(self))


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


class FairShareServer(uvicorn.Server):
    """A uvicorn server that accepts from the shared sockets itself, one connection at a time."""

    _accepting: list[asyncio.Task[None]]

    def __init__(self, config: uvicorn.Config, loads: Loads) -> None:
        super().__init__(config)
        self.loads = loads
        self.server_state.connections = _CountedConnections(loads)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._accepting = []
        self.loads.claim()
        # with an empty list, uvicorn starts the app (lifespan) and opens no listener of its own
        await super().startup(sockets=[] if sockets else sockets)
        if sockets and self.started:
            self._accepting = [asyncio.create_task(self._accept(sock)) for sock in sockets]

    def _protocol(self) -> asyncio.Protocol:
        config = self.config
        return config.http_protocol_class(  # type: ignore[call-arg, no-any-return]
            config=config, server_state=self.server_state, app_state=self.lifespan.state,
            _loop=asyncio.get_running_loop())

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        listener.setblocking(False)
        listener.listen(self.config.backlog)  # the supervisor only binds it
        while True:
            await _readable(loop, listener)
            # every waiting process is woken; the least busy one tries first
            pause = pause_before_accept(len(self.server_state.connections), self.loads.others())
            if pause:
                await asyncio.sleep(pause)
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue  # another process took it
            except OSError as exc:  # out of file descriptors, say: back off, as asyncio's own loop does
                uvicorn.config.logger.error("accepting a connection failed: %s", exc)
                await asyncio.sleep(1)
                continue
            self.loads.publish(len(self.server_state.connections) + 1)  # before the protocol counts it
            conn.setblocking(False)
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                await loop.connect_accepted_socket(self._protocol, conn)
            except OSError:
                conn.close()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for task in self._accepting:
            task.cancel()
        await asyncio.gather(*self._accepting, return_exceptions=True)
        self.loads.release()
        await super().shutdown(sockets)


class FairShareProcess(multiprocess.Process):
    """uvicorn's worker process, serving with FairShareServer."""

    loads: Loads  # set by main(), in the supervisor, before any worker is made

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        self.shared_loads = FairShareProcess.loads  # an attribute of the instance goes to the child
        super().__init__(config, sockets)

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = FairShareServer(config=self.config, loads=self.shared_loads)
        return self._server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dicomgw_gateway.workers")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    config = uvicorn.Config("dicomgw_gateway.app:create_app", factory=True, host=args.host,
                            port=args.port, workers=args.workers, log_level=args.log_level.lower(),
                            timeout_graceful_shutdown=30, access_log=False)
    # uvicorn's supervisor (restarts, health checks, signals) makes its workers by this name
    multiprocess.Process = FairShareProcess  # type: ignore[misc]
    # a restart brings each replacement up before its predecessor leaves: room for both
    FairShareProcess.loads = Loads(2 * args.workers + 1)
    multiprocess.Multiprocess(config, [config.bind_socket()]).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
