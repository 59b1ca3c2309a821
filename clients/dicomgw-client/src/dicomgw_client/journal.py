"""The record of the files a pull verified in its folder, so that the next pull need not hash them again.

``DEST/.dicomgw-pull/verified.jsonl``, one JSON object a line: a file's path, its SHA-256 and the size,
modification and change times (ns) it had when verified; or the SHA-256 a NIfTI file had when it was
fetched, by archive, collection, version and file (no published listing carries one). Lines are
appended as files are verified, buffered (a line cut short by a kill is ignored; a file whose line was
lost is hashed again), and the file is rewritten whole when a pull starts and ends. A record is
trusted only while the file's size and times are the recorded ones: the change time too, which a tool
that puts a modification time back cannot set.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

VolumeKey = tuple[str, str, int, str]  # archive, collection, version, file


@dataclass(frozen=True)
class Record:
    sha256: str
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, sha256: str, st: os.stat_result) -> Record:
        return cls(sha256, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def matches(self, st: os.stat_result) -> bool:
        return (self.size, self.mtime_ns, self.ctime_ns) == (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Journal:
    """The records of one folder (see the module's docstring); safe to call from several threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files: dict[str, Record] = {}
        self.volumes: dict[VolumeKey, str] = {}
        self._lock = threading.Lock()
        self._load()
        self._rewrite()
        self._out: IO[str] | None = open(path, "a", encoding="utf-8")

    def _load(self) -> None:
        try:
            lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            try:
                entry = json.loads(line)
                if "volume" in entry:
                    archive, collection, version, filename = entry["volume"]
                    key = (str(archive), str(collection), int(version), str(filename))
                    self.volumes[key] = str(entry["sha256"])
                else:
                    self.files[str(entry["path"])] = Record(str(entry["sha256"]), int(entry["size"]),
                                                             int(entry["mtime_ns"]), int(entry["ctime_ns"]))
            except (ValueError, TypeError, KeyError):
                continue

    def _lines(self) -> Iterator[str]:
        for path, r in sorted(self.files.items()):
            yield json.dumps({"path": path, "sha256": r.sha256, "size": r.size, "mtime_ns": r.mtime_ns,
                              "ctime_ns": r.ctime_ns}) + "\n"
        for key, sha256 in sorted(self.volumes.items()):
            yield json.dumps({"volume": list(key), "sha256": sha256}) + "\n"

    def _rewrite(self) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        with open(temporary, "w", encoding="utf-8") as out:
            out.writelines(self._lines())
        os.replace(temporary, self.path)

    def trusted(self, path: str, st: os.stat_result) -> str | None:
        """The SHA-256 recorded for the file at ``path`` when it is unchanged since (size and times)."""
        record = self.files.get(path)
        return record.sha256 if record is not None and record.matches(st) else None

    def record(self, path: str, sha256: str, st: os.stat_result) -> None:
        record = Record.of(sha256, st)
        with self._lock:
            self.files[path] = record
            self._append({"path": path, "sha256": sha256, "size": record.size, "mtime_ns": record.mtime_ns,
                          "ctime_ns": record.ctime_ns})

    def record_volume(self, key: VolumeKey, sha256: str) -> None:
        with self._lock:
            self.volumes[key] = sha256
            self._append({"volume": list(key), "sha256": sha256})

    def _append(self, entry: dict[str, Any]) -> None:
        # buffered (written every few dozen lines, and at close): a kill loses at most those lines,
        # and their files are then hashed again, not fetched
        assert self._out is not None
        self._out.write(json.dumps(entry) + "\n")

    def close(self, dest: Path) -> None:
        """Keep the records of files still as they were; the rest is forgotten."""
        if self._out is not None:
            self._out.close()
            self._out = None
        for path, record in list(self.files.items()):
            try:
                unchanged = record.matches((dest / path).stat())
            except OSError:
                unchanged = False
            if not unchanged:
                del self.files[path]
        self._rewrite()
