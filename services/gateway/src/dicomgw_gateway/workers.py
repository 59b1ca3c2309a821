"""`dicomgw serve` with several processes on one listening socket, each taking its share of connections.

uvicorn's own workers each accept every connection waiting on the shared socket at once, so the few
long-lived connections of a busy client (four parallel STOW-RS senders, OHIF's six) often all land in
the process that woke first, and the other cores idle: STOW throughput varied 1.6x from run to run with
the same corpus. Here every process is woken for a waiting connection and tries to accept it after a
short pause, longer the more connections it already serves: the process with fewer takes it.

Run by `dicomgw serve` (it execs ``python -m dicomgw_gateway.workers``): the supervisor imports
uvicorn and nothing of the app; only the worker processes load it.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys

import uvicorn
from uvicorn.supervisors import multiprocess

# pause before an accept, per connection the process already serves (capped): enough for a less busy
# process to win the race for the connection, short enough not to throttle a flood of them
PAUSE_PER_CONNECTION = 0.002
PAUSE_CONNECTIONS_CAP = 5


def pause_before_accept(open_connections: int) -> float:
    return PAUSE_PER_CONNECTION * min(open_connections, PAUSE_CONNECTIONS_CAP)


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

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._accepting = []
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
            # every waiting process is woken; the one serving fewer connections tries first
            await asyncio.sleep(pause_before_accept(len(self.server_state.connections)))
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue  # another process took it
            except OSError as exc:  # out of file descriptors, say: back off, as asyncio's own loop does
                uvicorn.config.logger.error("accepting a connection failed: %s", exc)
                await asyncio.sleep(1)
                continue
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
        await super().shutdown(sockets)


class FairShareProcess(multiprocess.Process):
    """uvicorn's worker process, serving with FairShareServer."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = FairShareServer(config=self.config)
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
    multiprocess.Multiprocess(config, [config.bind_socket()]).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
