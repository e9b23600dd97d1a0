"""The versioned meta.json model and the marker files (DESIGN §3)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from typing import Any

from blocks.errors import BlockCorruptError, InvalidInputError

# Format version of blocks this code writes. 2: tier rows carry every aggregate for every series
# (blocks/tiers.py); raw blocks are unchanged from 1. Readers accept every version listed below.
META_VERSION = 2
READABLE_META_VERSIONS = (1, 2)
MARK_VERSION = 1


class Resolution(IntEnum):
    """Block resolution in milliseconds; RAW holds every sample."""

    RAW = 0
    M5 = 300_000
    H1 = 3_600_000
    D1 = 86_400_000

    @property
    def label(self) -> str:
        """Short name used in CLIs and policies: raw, 5m, 1h, 1d."""
        return {0: "raw", 300_000: "5m", 3_600_000: "1h", 86_400_000: "1d"}[int(self)]

    @property
    def finer(self) -> "Resolution":
        """The tier this one is built from (raw for 5m); ValueError for raw."""
        i = LADDER.index(self)
        if i == 0:
            raise ValueError("raw has no finer tier")
        return LADDER[i - 1]

    @classmethod
    def parse(cls, text: str) -> "Resolution":
        """Parse 'raw', '5m', '1h', '1d' or a millisecond count."""
        by_label = {r.label: r for r in cls}
        if text in by_label:
            return by_label[text]
        try:
            return cls(int(text))
        except ValueError:
            raise InvalidInputError(f"invalid resolution {text!r}: use raw, 5m, 1h or 1d") from None


#: The tiers from finest to coarsest; each is built from the one before it (the cascade).
LADDER: tuple[Resolution, ...] = tuple(Resolution)
CASCADE: tuple[tuple[Resolution, Resolution], ...] = tuple(zip(LADDER, LADDER[1:]))


@dataclass(frozen=True)
class FileEntry:
    """One file of a block with the size and sha256 every reader can check."""

    name: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class BlockStats:
    """Counts of a block: series, rows (samples for raw, windows otherwise), raw samples, bytes."""

    series: int
    rows: int
    samples: int
    bytes: int


@dataclass(frozen=True)
class BlockMeta:
    """Contents of meta.json; the block's commit point, written last."""

    ulid: str
    tenant: str
    min_time: int
    max_time: int
    resolution_ms: int
    level: int
    sources: tuple[str, ...]
    parents: tuple[str, ...]
    labels: dict[str, str]
    stats: BlockStats
    files: tuple[FileEntry, ...]
    created_by: str
    created_at_ms: int
    version: int = META_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def resolution(self) -> Resolution:
        """Resolution as the enum."""
        return Resolution(self.resolution_ms)

    def file(self, name: str) -> FileEntry:
        """The entry of file `name`; raises KeyError if the block has none."""
        for f in self.files:
            if f.name == name:
                return f
        raise KeyError(name)

    def to_json(self) -> bytes:
        """Canonical JSON bytes (sorted keys, newline-terminated)."""
        d = asdict(self)
        d["sources"] = list(self.sources)
        d["parents"] = list(self.parents)
        d["files"] = [asdict(f) for f in self.files]
        return (json.dumps(d, sort_keys=True, indent=1) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, *, block_id: str | None = None) -> "BlockMeta":
        """Parse and validate meta.json; raises BlockCorruptError with the reason."""
        try:
            d = json.loads(data)
            if not isinstance(d, dict):
                raise ValueError("not a JSON object")
            version = d.get("version")
            if version not in READABLE_META_VERSIONS:
                raise ValueError(f"unsupported meta version {version!r}")
            stats = BlockStats(**d["stats"])
            files = tuple(FileEntry(**f) for f in d["files"])
            meta = cls(
                ulid=str(d["ulid"]), tenant=str(d["tenant"]), min_time=int(d["min_time"]),
                max_time=int(d["max_time"]), resolution_ms=int(d["resolution_ms"]),
                level=int(d["level"]), sources=tuple(d["sources"]), parents=tuple(d["parents"]),
                labels=dict(d.get("labels") or {}), stats=stats, files=files,
                created_by=str(d["created_by"]), created_at_ms=int(d["created_at_ms"]),
                version=version, extra=dict(d.get("extra") or {}),
            )
            Resolution(meta.resolution_ms)
            if meta.min_time >= meta.max_time:
                raise ValueError(f"empty time range [{meta.min_time}, {meta.max_time})")
            if block_id is not None and meta.ulid != block_id:
                raise ValueError(f"meta ulid {meta.ulid} does not match directory {block_id}")
            return meta
        except (ValueError, KeyError, TypeError) as e:
            raise BlockCorruptError(f"invalid meta.json of block {block_id}: {e}", block_id) from None


class _MarkFile:
    """JSON (de)serialisation shared by the mark files."""

    FILE = ""

    def to_json(self) -> bytes:
        """JSON bytes of the mark."""
        return (json.dumps(asdict(self), sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes):
        """Parse a mark; raises BlockCorruptError."""
        try:
            return cls(**json.loads(data))
        except (ValueError, TypeError) as e:
            raise BlockCorruptError(f"invalid {cls.FILE}: {e}") from None


@dataclass(frozen=True)
class DeletionMark(_MarkFile):
    """deletion-mark.json: the block goes after `deletion_time_ms` + the configured delay."""

    FILE = "deletion-mark.json"
    block_id: str
    deletion_time_ms: int
    reason: str
    version: int = MARK_VERSION


@dataclass(frozen=True)
class NoCompactMark(_MarkFile):
    """no-compact-mark.json: the compactor leaves this block alone, for `reason`."""

    FILE = "no-compact-mark.json"
    block_id: str
    no_compact_time_ms: int
    reason: str
    version: int = MARK_VERSION
