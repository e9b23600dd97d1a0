"""Write-ahead log: numbered append-only segments of checksummed records, group-committed fsync.

Record: `u32 length | u32 crc32(type byte + payload) | u8 type | payload`. A reader stops at the
first record that is cut short or fails its checksum (a torn tail after a crash) and reports how
far the segment was valid. A process never appends to a segment an earlier process wrote: it
starts a new one, so the records of a crashed run are only ever read.

Durability: `append` writes a record into the current segment and returns its log position;
`sync(position)` returns once that position is on disk. Concurrent writers share one fsync (the
first to arrive syncs everything written so far, optionally after `commit_delay` to gather more).
"""

from __future__ import annotations

import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

_HEADER = struct.Struct("<IIB")
MAX_RECORD = 1 << 30
SUFFIX = ".wal"


@dataclass(frozen=True)
class SegmentRead:
    """What reading one segment found."""

    records: list[tuple[int, bytes]]   # (type, payload)
    valid_bytes: int                   # where the valid prefix ends
    size: int                          # the file's size
    error: str | None                  # why reading stopped early, if it did


def frame(rtype: int, payload: bytes) -> bytes:
    """One framed record."""
    crc = zlib.crc32(payload, zlib.crc32(bytes((rtype,))))
    return _HEADER.pack(len(payload), crc, rtype) + payload


class SegmentScan:
    """Iterate a segment's intact records one at a time (memory: one record); after the loop,
    `valid_bytes`, `size` and `error` say where and why reading stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.valid_bytes = 0
        self.size = path.stat().st_size
        self.error: str | None = None

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        with open(self.path, "rb") as f:
            pos = 0
            while pos < self.size:
                head = f.read(_HEADER.size)
                if len(head) < _HEADER.size:
                    self.error = f"torn record header at byte {pos}"
                    return
                length, crc, rtype = _HEADER.unpack(head)
                if length > MAX_RECORD or pos + _HEADER.size + length > self.size:
                    self.error = f"torn record at byte {pos} ({length} bytes declared, {self.size - pos - _HEADER.size} present)"
                    return
                payload = f.read(length)
                if len(payload) != length or zlib.crc32(payload, zlib.crc32(bytes((rtype,)))) != crc:
                    self.error = f"checksum mismatch in record at byte {pos}"
                    return
                pos += _HEADER.size + length
                self.valid_bytes = pos
                yield rtype, payload


def read_segment(path: Path) -> SegmentRead:
    """Every intact record of a segment, stopping at the first torn or corrupt one."""
    scan = SegmentScan(path)
    records = list(scan)
    return SegmentRead(records, scan.valid_bytes, scan.size, scan.error)


def segment_path(directory: Path, number: int) -> Path:
    """Path of segment `number`."""
    return directory / f"{number:08d}{SUFFIX}"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """(number, path) of every segment, in order."""
    out = []
    for p in directory.glob(f"*{SUFFIX}"):
        stem = p.name[: -len(SUFFIX)]
        if stem.isdigit():
            out.append((int(stem), p))
    return sorted(out)


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (created, renamed, removed files) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WAL:
    """The writer side. Thread-safe."""

    def __init__(self, directory: Path, *, segment_bytes: int = 1 << 30, commit_delay_s: float = 0.0,
                 on_fsync: Callable[[float], None] | None = None) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.commit_delay_s = commit_delay_s
        self.on_fsync = on_fsync or (lambda seconds: None)
        self._lock = threading.Lock()          # appends, rotation
        self._sync_lock = threading.Lock()     # one fsync at a time; closes retired files
        self._retired: list = []
        existing = list_segments(self.dir)
        self.segment = (existing[-1][0] + 1) if existing else 1
        self._file = self._open(self.segment)
        self._seg_written = 0
        self.written = 0                        # log position: bytes appended by this process
        self.synced = 0
        self.closed = False

    def _open(self, number: int):
        f = open(segment_path(self.dir, number), "xb", buffering=0)
        fsync_dir(self.dir)
        return f

    def append(self, build: Callable[[int], list[bytes]]) -> tuple[int, int]:
        """Write the framed records `build(segment)` returns; (segment, log position after them).

        `build` runs under the WAL lock with the segment the records will land in, so what it
        decides per segment (e.g. which series still need declaring there) stays consistent.
        """
        with self._lock:
            if self.closed:
                raise RuntimeError("WAL is closed")
            if self._seg_written >= self.segment_bytes:
                self._rotate_locked()
            data = b"".join(build(self.segment))
            if data:
                self._write_all(data)
            return self.segment, self.written

    def _write_all(self, data: bytes) -> None:
        """Append or, on an I/O error (disk full), cut the segment back so no torn record stays
        in front of later ones; if even that fails, move to a new segment."""
        start = self._seg_written
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._file.fileno(), view)
                view = view[n:]
        except OSError:
            try:
                os.ftruncate(self._file.fileno(), start)
                os.lseek(self._file.fileno(), start, os.SEEK_SET)
            except OSError:
                self._rotate_locked()
            raise
        self._seg_written += len(data)
        self.written += len(data)

    def rotate(self) -> int:
        """Close the current segment (durably) and start the next; returns the closed number."""
        with self._lock:
            return self._rotate_locked()

    def _rotate_locked(self) -> int:
        old, number = self._file, self.segment
        t0 = time.perf_counter()
        os.fsync(old.fileno())
        self.on_fsync(time.perf_counter() - t0)
        self.synced = max(self.synced, self.written)
        self._retired.append(old)   # closed by sync()/close(), which may be using it right now
        self.segment += 1
        self._file = self._open(self.segment)
        self._seg_written = 0
        return number

    def sync(self, position: int) -> None:
        """Return once everything up to `position` is on disk."""
        if self.synced >= position:
            return
        with self._sync_lock:
            if self.synced >= position:
                return
            if self.commit_delay_s:
                time.sleep(self.commit_delay_s)
            with self._lock:
                target, f = self.written, self._file
                retired, self._retired = self._retired, []
            for r in retired:
                r.close()
            t0 = time.perf_counter()
            os.fsync(f.fileno())
            self.on_fsync(time.perf_counter() - t0)
            self.synced = max(self.synced, target)

    def close(self) -> None:
        """fsync and close; further appends fail."""
        with self._sync_lock, self._lock:
            if self.closed:
                return
            os.fsync(self._file.fileno())
            self.synced = self.written
            self._file.close()
            for r in self._retired:
                r.close()
            self._retired = []
            self.closed = True

    def bytes_on_disk(self) -> int:
        """Total size of every segment file (what the WAL-growth alert watches)."""
        total = 0
        for _, p in list_segments(self.dir):
            try:
                total += p.stat().st_size
            except FileNotFoundError:
                pass
        return total

    def delete_segments(self, numbers: list[int]) -> None:
        """Remove closed segments (never the current one)."""
        for n in numbers:
            if n >= self.segment:
                raise ValueError(f"segment {n} is still open")
            segment_path(self.dir, n).unlink(missing_ok=True)
        if numbers:
            fsync_dir(self.dir)


def iter_segments(directory: Path) -> Iterator[tuple[int, Path, SegmentScan]]:
    """(number, path, record scanner) of every segment in order."""
    for number, path in list_segments(directory):
        yield number, path, SegmentScan(path)
