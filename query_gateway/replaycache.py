"""The gateway's cache of what queries replay or encode per (block, series): blocks are
immutable, so a dashboard's refresh need not read or decode anything twice.

Two tiers:
- memory: an LRU of numpy arrays within `max_bytes` (counted in the gateway's RSS);
- disk (optional): what leaves the memory tier (pushed out, too big for it, or from a query
  too big for it) written to append-only segment files in a private directory, the oldest
  segment dropped past `disk_bytes`. The OS page cache keeps the hot segments in memory without
  charging them to the gateway (as Prometheus's mmap'd chunks are), so queries too big for the
  memory tier are served from here on their next run.
"""

from __future__ import annotations

import atexit
import mmap
import os
import shutil
import tempfile
import threading
import weakref
from collections import OrderedDict

import numpy as np

from blocks.log import log

PREFIX = "strata-replay-"
ENTRY_OVERHEAD = 100          # bookkeeping per memory entry, bytes
SEGMENT_BYTES = 64 << 20      # a disk segment file


class DiskTier:
    """Entries as bytes in segment files; the oldest segment goes first past `max_bytes`."""

    def __init__(self, max_bytes: int, directory: str | None = None) -> None:
        self.max_bytes = max_bytes
        _remove_orphans(directory)
        self.dir = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=directory)
        self.bytes = 0
        self.hits = 0
        self._index: dict[tuple, tuple[int, int, tuple, int]] = {}   # key -> (segment, offset, layout, size)
        self._segments: OrderedDict[int, list] = OrderedDict()       # segment -> [fd, size, keys]
        self._maps: dict[int, tuple[weakref.ref, int]] = {}          # segment -> (its mapping, length)
        self._next = 0
        self._lock = threading.Lock()
        atexit.register(self.close)

    def put_many(self, entries: list[tuple[tuple, tuple[np.ndarray, ...]]]) -> None:
        """Write entries (key, arrays): appended to the newest segment, one write per segment
        touched (a query batch's thousands of entries cost a few syscalls, not one per array)."""
        todo = []
        for key, value in entries:
            if any(a.dtype.hasobject for a in value):
                continue  # object arrays (v1 tiers' missing values) stay in memory only
            size = sum(a.nbytes for a in value)
            if 0 < size <= SEGMENT_BYTES:
                todo.append((key, value, size))
        if not todo:
            return
        with self._lock:
            if self.dir is None:
                return
            pending: list = []  # (segment, offset) of the run being gathered, its buffers and keys
            run = None
            seen: set[tuple] = set()
            for key, value, size in todo:
                if key in self._index or key in seen:
                    continue
                seen.add(key)
                seg = next(reversed(self._segments), None)
                if seg is None or self._segments[seg][1] + size > SEGMENT_BYTES:
                    if run is not None:
                        pending.append(run)
                    seg = self._next
                    self._next += 1
                    fd = os.open(os.path.join(self.dir, f"{seg:08d}"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
                    self._segments[seg] = [fd, 0, []]
                    run = None
                entry = self._segments[seg]
                if run is None:
                    run = (seg, entry[1], [], [])
                run[2].extend(memoryview(np.ascontiguousarray(a)).cast("B") for a in value)
                run[3].append((key, entry[1], tuple((a.dtype, len(a)) for a in value), size))
                entry[1] += size  # reserved now, indexed once written
            if run is not None:
                pending.append(run)
            for seg, offset, bufs, keys in pending:
                entry = self._segments[seg]
                try:
                    _pwrite_all(entry[0], bufs, offset)
                except OSError:  # disk full or gone: these entries are simply not cached
                    continue
                for key, at, layout, size in keys:
                    self._index[key] = (seg, at, layout, size)
                    entry[2].append(key)
                    self.bytes += size
            while self.bytes > self.max_bytes and len(self._segments) > 1:
                self._drop_oldest()

    def get(self, key: tuple) -> tuple[np.ndarray, ...] | None:
        return self.get_many([key])[0]

    def get_many(self, keys: list[tuple]) -> list[tuple[np.ndarray, ...] | None]:
        """Each entry's arrays (None if absent): read-only views of its segment file mapped into
        memory (no copy; the page cache holds the bytes). A mapping lives as long as views of it
        do, so a query's batch maps each segment once and unmaps it when the batch is done with
        its arrays: the pages count in the gateway's RSS only meanwhile. (pread copied every
        entry once more: on the dashboard's warm raw panels that copy was a sixth of the
        gateway's CPU.) One lock for all keys: a batch looks up thousands."""
        out: list[tuple[np.ndarray, ...] | None] = []
        found_at = []
        with self._lock:
            index, maps = self._index, {}
            for key in keys:
                found = index.get(key)
                if found is None:
                    out.append(None)
                    continue
                seg, offset, layout, size = found
                mapped = maps.get(seg)
                if mapped is None or len(mapped) < offset + size:
                    try:
                        mapped = maps[seg] = self._mapped(seg, offset + size)
                    except (OSError, ValueError):
                        out.append(None)
                        continue
                found_at.append(len(out))
                out.append((mapped, offset, layout))
            self.hits += len(found_at)
        for i in found_at:
            mapped, pos, layout = out[i]
            arrays = []
            for dt, n in layout:
                arrays.append(np.frombuffer(mapped, dtype=dt, count=n, offset=pos))
                pos += dt.itemsize * n
            out[i] = tuple(arrays)
        return out

    def _mapped(self, seg: int, end: int) -> mmap.mmap:
        """Segment `seg` mapped read-only up to at least `end` (under the lock): the mapping
        still alive from an earlier get, or a new one of the file as written so far."""
        held = self._maps.get(seg)
        mapped = held[0]() if held is not None and held[1] >= end else None
        if mapped is None:
            fd = self._segments[seg][0]
            length = os.fstat(fd).st_size
            if length < end:
                raise ValueError("segment shorter than its index")
            mapped = mmap.mmap(fd, length, prot=mmap.PROT_READ)
            self._maps[seg] = (weakref.ref(mapped), length)
        return mapped

    def _drop_oldest(self) -> None:
        seg, (fd, size, keys) = self._segments.popitem(last=False)
        self._maps.pop(seg, None)  # a live mapping stays valid for its views, file gone or not
        for k in keys:
            self._index.pop(k, None)
        self.bytes -= size
        os.close(fd)
        try:
            os.unlink(os.path.join(self.dir, f"{seg:08d}"))
        except OSError:
            pass

    def close(self) -> None:
        """Remove the directory (at exit)."""
        with self._lock:
            for fd, _, _ in self._segments.values():
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._segments.clear()
            self._index.clear()
            self._maps.clear()
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None


IOV_MAX = 1024  # buffers per pwritev (Linux's limit)


def _pwrite_all(fd: int, bufs: list, offset: int) -> None:
    """Write the buffers back to back from `offset`, gathered by the kernel (no joined copy: a
    batch's tens of MB in one temporary made glibc raise its mmap threshold and later queries
    slower)."""
    for i in range(0, len(bufs), IOV_MAX):
        group = bufs[i:i + IOV_MAX]
        want = sum(b.nbytes for b in group)
        done = os.pwritev(fd, group, offset)
        if done != want:  # a short write: finish it buffer by buffer
            data = b"".join(group)
            while done < want:
                done += os.pwrite(fd, data[done:], offset + done)
        offset += want


def _remove_orphans(directory: str | None) -> None:
    """Remove disk tiers left by gateways that died without cleaning up (kill -9, OOM)."""
    base = directory or tempfile.gettempdir()
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its gateway still runs
        except ProcessLookupError:
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
        except OSError:
            continue


class ReplayCache:
    """(block, series, replay) -> arrays: memory LRU within `max_bytes`, then the disk tier."""

    def __init__(self, max_bytes: int, disk_bytes: int = 0, disk_dir: str | None = None) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = self.misses = 0
        self._items: OrderedDict[tuple, tuple[np.ndarray, ...]] = OrderedDict()
        self._lock = threading.Lock()
        self.disk = None
        if disk_bytes > 0:
            try:
                self.disk = DiskTier(disk_bytes, disk_dir)
            except OSError as e:  # no writable temp directory: serve without the disk tier
                log("gateway", "replay_disk_unavailable", "warn", directory=disk_dir or tempfile.gettempdir(),
                    error=str(e))

    def admits(self, estimate_bytes: float) -> tuple[bool, bool]:
        """(keep in memory, keep at all) for a query whose entries total about `estimate_bytes`:
        a query bigger than a tier only churns it."""
        memory = estimate_bytes <= self.max_bytes
        return memory, memory or (self.disk is not None and estimate_bytes <= self.disk.max_bytes // 2)

    def get(self, key: tuple) -> tuple[np.ndarray, ...] | None:
        return self.get_many([key])[0]

    def get_many(self, keys: list[tuple]) -> list[tuple[np.ndarray, ...] | None]:
        """Each key's arrays, None where neither tier holds it (one lock per tier for all)."""
        with self._lock:
            items = self._items
            out = [items.get(key) for key in keys]
            for key, hit in zip(keys, out):
                if hit is not None:
                    items.move_to_end(key)
        todo = [i for i, hit in enumerate(out) if hit is None]
        if todo and self.disk is not None:
            for i, hit in zip(todo, self.disk.get_many([keys[i] for i in todo])):
                out[i] = hit
        with self._lock:
            missed = sum(hit is None for hit in out)
            self.hits += len(out) - missed
            self.misses += missed
        return out

    def put_many(self, entries: list[tuple[tuple, tuple[np.ndarray, ...]]], *, memory: bool = True) -> None:
        """Keep entries (key, arrays): in memory (unless `memory` is false), and on disk (if there
        is one) once they leave memory: pushed out by newer ones, too big for it, or not for it.
        The disk tier writes a call's entries in one go, outside the memory tier's lock. (Written
        when they are kept in memory, every entry cost a disk write on the query that made it:
        a sixth of a first 30-day gRPC raw read's CPU.)"""
        if not memory:
            if self.disk is not None:
                self.disk.put_many(entries)
            return
        out: list[tuple[tuple, tuple[np.ndarray, ...]]] = []
        with self._lock:
            for key, value in entries:
                if key in self._items:
                    continue
                size = sum(a.nbytes for a in value) + ENTRY_OVERHEAD
                if size > self.max_bytes // 8:  # one huge series would only evict everything else
                    out.append((key, value))
                    continue
                self._items[key] = value
                self.bytes += size
            while self.bytes > self.max_bytes and self._items:
                old = self._items.popitem(last=False)
                self.bytes -= sum(a.nbytes for a in old[1]) + ENTRY_OVERHEAD
                out.append(old)
        if out and self.disk is not None:
            self.disk.put_many(out)

    def close(self) -> None:
        """Drop the disk tier's files (server shutdown)."""
        if self.disk is not None:
            self.disk.close()


__all__ = ["ReplayCache", "DiskTier"]
