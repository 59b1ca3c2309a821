"""A pull's progress as one line on stderr: rewritten in place on a terminal, a line per tenth elsewhere.

Not a progress-bar library: a training node installs the client with nothing but what reading a
collection needs, and one line (files, bytes, rate, time left) is all a pull has to say. Thread-safe:
the fetch threads advance it.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Protocol, TextIO


class Progress(Protocol):
    """What a pull reports to: the files to go through, then each one done (with the bytes it fetched)."""

    def start(self, label: str, total: int) -> None: ...

    def advance(self, fetched_bytes: int) -> None: ...

    def finish(self) -> None: ...


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressLine:
    """``pull NAME vN  120/300 files  45.2 MB  12.3 MB/s  0:00:14 left`` on ``stream`` (stderr)."""

    def __init__(self, stream: TextIO | None = None, interval: float = 0.2) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty()
        self.interval = interval
        self._lock = threading.Lock()
        self.label, self.total, self.done, self.fetched, self.bytes = "", 0, 0, 0, 0
        self._started = self._shown = 0.0
        self._tenth = -1

    def start(self, label: str, total: int) -> None:
        with self._lock:
            self.label, self.total = label, total
            self._started = time.monotonic()
            self._show(force=True)

    def advance(self, fetched_bytes: int) -> None:
        with self._lock:
            self.done += 1
            self.bytes += fetched_bytes
            self.fetched += fetched_bytes > 0
            self._show(force=self.done == self.total)

    def finish(self) -> None:
        with self._lock:
            if self.live:
                self.stream.write("\n")
                self.stream.flush()

    def text(self) -> str:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = self.bytes / elapsed
        line = f"{self.label}  {self.done}/{self.total} files  {_size(self.bytes)}  {_size(rate)}/s"
        # the files still to go at the pace so far
        if self.fetched and self.done < self.total:
            line += f"  {_duration((self.total - self.done) * elapsed / self.done)} left"
        return line

    def _show(self, *, force: bool) -> None:
        now = time.monotonic()
        if self.live:
            if force or now - self._shown >= self.interval:
                self.stream.write("\r\x1b[2K" + self.text())
                self.stream.flush()
                self._shown = now
            return
        tenth = self.done * 10 // max(self.total, 1)
        if tenth != self._tenth:
            self._tenth = tenth
            self.stream.write(self.text() + "\n")
            self.stream.flush()


class StatusLine:
    """Progress as one line on ``stream`` (stderr) for the other commands: ``upload  120/300 instances
    45.2/120.0 MB  12.3 MB/s  0:00:14 left``, or a build's ``mr-2024 v1  120/300 instances  building``.

    ``update`` sets what is known (the totals may come late, a byte count may go back when a request
    is sent again); on a terminal the line is rewritten in place, elsewhere a line is written per tenth
    and at each change of state. Disabled (``enabled=False``, ``--quiet``) it writes nothing.
    """

    def __init__(self, label: str, unit: str = "instances", *, stream: TextIO | None = None,
                 enabled: bool = True, interval: float = 0.2) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.label, self.unit, self.enabled, self.interval = label, unit, enabled, interval
        self.live = enabled and self.stream.isatty()
        self.done, self.total, self.bytes, self.bytes_total, self.state = 0, 0, 0, 0, ""
        self._started = time.monotonic()
        self._shown = 0.0
        self._said: tuple[int, str] | None = None
        self._lock = threading.Lock()

    def update(self, *, done: int | None = None, total: int | None = None, advance: int = 0,
               advance_bytes: int = 0, bytes_total: int | None = None, state: str | None = None) -> None:
        with self._lock:
            self.done = (self.done if done is None else done) + advance
            self.bytes += advance_bytes
            self.total = self.total if total is None else total
            self.bytes_total = self.bytes_total if bytes_total is None else bytes_total
            self.state = self.state if state is None else state
            if self.enabled:
                self._show()

    def close(self) -> None:
        with self._lock:
            if self.live:
                self.stream.write("\r\x1b[2K" + self.text() + "\n")
                self.stream.flush()

    def __enter__(self) -> StatusLine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def text(self) -> str:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        line = f"{self.label}  {self.done}/{self.total or '?'} {self.unit}"
        if self.bytes_total:
            line += f"  {_size(self.bytes)} of {_size(self.bytes_total)}  {_size(self.bytes / elapsed)}/s"
        if self.state:
            line += f"  {self.state}"
        # what is still to go at the pace so far, by bytes where they are counted
        done, total = (self.bytes, self.bytes_total) if self.bytes_total else (self.done, self.total)
        if 0 < done < total:
            line += f"  {_duration((total - done) * elapsed / done)} left"
        return line

    def _show(self) -> None:
        now = time.monotonic()
        if self.live:
            if now - self._shown >= self.interval:
                self.stream.write("\r\x1b[2K" + self.text())
                self.stream.flush()
                self._shown = now
            return
        said = (self.done * 10 // max(self.total, 1) if self.total else -1, self.state)
        if said != self._said:
            self._said = said
            self.stream.write(self.text() + "\n")
            self.stream.flush()
