"""Query execution shared by every API: listing -> tier plan -> DuckDB reads -> series.

A query yields `SeriesData` sorted by labels (Prometheus label order), each holding its data
as parts in time order: raw (ts, value) arrays, or downsampled windows with the tier's columns.
Adapters turn parts into Thanos AggrChunks, remote-read samples or XOR chunks.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from blocks.errors import InvalidInputError, ObjectNotFound, StrataError
from blocks.index import load_index
from blocks.labels import Labels
from blocks.meta import Resolution
from blocks.objstore import ObjectStore
from blocks.reader import BlockListing, load_listing
from blocks.selectors import Matcher
from blocks.tiers import decode_windows
from query_gateway.reader import BlockReader, split_by_ref
from query_gateway.tiers import TierPlan, choose_tiers, readable_blocks



class LimitExceeded(StrataError):
    """A query asked for more than the configured limits allow."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind  # "series", "samples" or "time"


@dataclass(frozen=True)
class Limits:
    """Per-request limits (0 = unlimited)."""

    max_series: int = 0
    max_samples: int = 0
    max_range_ms: int = 0


@dataclass
class Part:
    """One contiguous piece of a series at one resolution."""

    resolution: Resolution
    columns: dict[str, np.ndarray]  # always "ts"; raw: "value"; windows: blocks.tiers.LOGICAL_COLUMNS

    @property
    def ts(self) -> np.ndarray:
        return self.columns["ts"]


@dataclass
class SeriesData:
    """A series' labels, its family type, and its parts in time order."""

    labels: Labels
    metric_type: str
    parts: list[Part] = field(default_factory=list)

    def samples(self) -> int:
        return sum(len(p.ts) for p in self.parts)


@dataclass
class Result:
    """Series plus warnings and the plan that produced them."""

    series: list[SeriesData]
    warnings: list[str]
    plan: TierPlan


class Engine:
    """Queries over one bucket; listings are refreshed at most every `refresh_s` seconds."""

    def __init__(self, store: ObjectStore, *, deletion_delay_ms: int = 48 * 3_600_000, refresh_s: float = 15.0,
                 limits: Limits = Limits(), cache_blocks: int = 256) -> None:
        self.store = store
        self.reader = BlockReader(store, cache_blocks=cache_blocks)
        self.deletion_delay_ms = deletion_delay_ms
        self.refresh_s = refresh_s
        self.limits = limits
        self._listings: dict[str, tuple[float, BlockListing]] = {}
        self._lock = threading.Lock()

    # ---- listings ------------------------------------------------------------------------------
    def listing(self, tenant: str) -> BlockListing:
        """The tenant's blocks: the index when present and fresh enough, else a LIST."""
        now = time.monotonic()
        with self._lock:
            hit = self._listings.get(tenant)
            if hit and now - hit[0] < self.refresh_s:
                return hit[1]
        try:
            listing, _ = load_index(self.store, tenant)
            # The index may lag uploads (the receiver, imports) and marks: one LIST tells.
            metas, marks = set(), set()
            for key in self.store.list(f"{tenant}/"):
                parts = key.split("/")
                if len(parts) == 3 and parts[2] == "meta.json":
                    metas.add(parts[1])
                elif len(parts) == 3 and parts[2] == "deletion-mark.json":
                    marks.add(parts[1])
            if metas != {m.ulid for m in listing.metas} or marks != set(listing.deletion_marks):
                listing = load_listing(self.store, tenant)
        except ObjectNotFound:
            listing = load_listing(self.store, tenant)
        with self._lock:
            self._listings[tenant] = (now, listing)
        return listing

    def time_range(self, tenant: str) -> tuple[int, int]:
        """(min, max) time over the tenant's readable blocks; (0, -1) when empty."""
        listing = self.listing(tenant)
        marks = {u: m.deletion_time_ms for u, m in listing.deletion_marks.items()}
        metas = readable_blocks(listing.metas, marks=marks, delay_ms=self.deletion_delay_ms,
                                now_ms=int(time.time() * 1000))
        if not metas:
            return 0, -1
        return min(m.min_time for m in metas), max(m.max_time for m in metas) - 1

    def plan(self, tenant: str, min_time: int, max_time: int, *, step_ms: int = 0, window_ms: int = 0,
             max_resolution_ms: int | None = None, now_ms: int | None = None) -> TierPlan:
        """The tier plan for a query (pure choice over the current listing)."""
        listing = self.listing(tenant)
        marks = {u: m.deletion_time_ms for u, m in listing.deletion_marks.items()}
        return choose_tiers(min_time, max_time, listing.metas, step_ms=step_ms, window_ms=window_ms,
                            max_resolution_ms=max_resolution_ms, marks=marks, delay_ms=self.deletion_delay_ms,
                            now_ms=int(time.time() * 1000) if now_ms is None else now_ms)

    # ---- queries -------------------------------------------------------------------------------
    def check_range(self, min_time: int, max_time: int) -> None:
        if max_time < min_time:
            raise InvalidInputError(f"invalid time range: end {max_time} before start {min_time}")
        if self.limits.max_range_ms and max_time - min_time > self.limits.max_range_ms:
            raise LimitExceeded(f"query time range {(max_time - min_time) / 3_600_000:.1f}h exceeds the limit of "
                                f"{self.limits.max_range_ms / 3_600_000:.1f}h", "time")

    def select(self, tenant: str, matchers: Sequence[Matcher], min_time: int, max_time: int, *, step_ms: int = 0,
               window_ms: int = 0, max_resolution_ms: int | None = None, skip_data: bool = False) -> Result:
        """Every series matching `matchers` with data in [min_time, max_time], sorted by labels."""
        self.check_range(min_time, max_time)
        plan = self.plan(tenant, min_time, max_time, step_ms=step_ms, window_ms=window_ms,
                         max_resolution_ms=max_resolution_ms)
        by_labels: dict[Labels, SeriesData] = {}
        samples = 0
        for seg in plan.segments:
            lo, hi = max(seg.start, min_time), min(seg.end, max_time + 1)
            pieces: dict[Labels, list[Part]] = {}
            for meta in seg.blocks:
                matched = self.reader.match(meta, matchers)
                if not matched:
                    continue
                types = self.reader.metric_types(meta)
                for ref, lab in matched:
                    if lab not in by_labels:
                        by_labels[lab] = SeriesData(lab, types[ref])
                self._check_series(len(by_labels))
                if skip_data:
                    continue
                table = self.reader.read(meta, [r for r, _ in matched], lo, hi)
                samples += table.num_rows
                self._check_samples(samples)
                spans = split_by_ref(table)
                if meta.resolution == Resolution.RAW:
                    arrays = {c: table.column(c).to_numpy(zero_copy_only=False) for c in ("ts", "value")}
                else:
                    arrays = decode_windows(table, meta.resolution_ms, meta.version).logical()
                    arrays.pop("series_ref")
                for ref, lab in matched:
                    if ref in spans:
                        off, n = spans[ref]
                        pieces.setdefault(lab, []).append(
                            Part(seg.resolution, {c: a[off:off + n] for c, a in arrays.items()}))
            for lab, parts in pieces.items():
                by_labels[lab].parts.append(_merge_parts(parts))
        out = [s for _, s in sorted(by_labels.items())]
        if not skip_data:
            out = [s for s in out if s.parts]
        return Result(out, list(plan.warnings), plan)

    def _check_series(self, n: int) -> None:
        if self.limits.max_series and n > self.limits.max_series:
            raise LimitExceeded(f"query matches more than {self.limits.max_series} series (the limit)", "series")

    def _check_samples(self, n: int) -> None:
        if self.limits.max_samples and n > self.limits.max_samples:
            raise LimitExceeded(f"query reads more than {self.limits.max_samples} samples (the limit)", "samples")

    def label_names(self, tenant: str, matchers: Sequence[Matcher], start: int, end: int) -> list[str]:
        """Label names of series matching (all series when no matchers) in [start, end]."""
        names: set[str] = set()
        for s in self._series_only(tenant, matchers, start, end):
            names.update(k for k, _ in s.labels)
        return sorted(names)

    def label_values(self, tenant: str, name: str, matchers: Sequence[Matcher], start: int, end: int) -> list[str]:
        """Values of label `name` over matching series in [start, end]."""
        values = set()
        for s in self._series_only(tenant, matchers, start, end):
            v = dict(s.labels).get(name)
            if v:
                values.add(v)
        return sorted(values)

    def _series_only(self, tenant: str, matchers: Sequence[Matcher], start: int, end: int) -> list[SeriesData]:
        if not matchers:
            matchers = [Matcher("__name__", "=~", ".+")]
        # Series only: any tier lists the same series, so take the coarsest readable one.
        return self.select(tenant, matchers, start, end, max_resolution_ms=int(Resolution.D1), skip_data=True).series


def _merge_parts(parts: list[Part]) -> Part:
    """Parts of one series from overlapping blocks of one tier: sorted, first sample per ts wins."""
    if len(parts) == 1:
        return parts[0]
    cols = {c: np.concatenate([p.columns[c] for p in parts]) for c in parts[0].columns}
    order = np.argsort(cols["ts"], kind="stable")
    ts = cols["ts"][order]
    keep = np.r_[True, ts[1:] != ts[:-1]]
    return Part(parts[0].resolution, {c: a[order][keep] for c, a in cols.items()})


def parse_matchers(pairs: Iterable[tuple[str, int | str, str]]) -> list[Matcher]:
    """(name, type, value) with type as Prometheus/Thanos enum 0..3 or an operator string."""
    ops = {0: "=", 1: "!=", 2: "=~", 3: "!~", "=": "=", "!=": "!=", "=~": "=~", "!~": "!~"}
    out = []
    for name, typ, value in pairs:
        if typ not in ops:
            raise InvalidInputError(f"invalid matcher type {typ!r}")
        if not name:
            raise InvalidInputError("invalid matcher: empty label name")
        out.append(Matcher(name, ops[typ], value))
    try:
        if out and all(m.matches("") for m in out):  # also compiles every regex
            raise InvalidInputError("at least one matcher must not match the empty string")
    except re.error as e:
        raise InvalidInputError(f"invalid regex in matchers: {e}") from None
    return out


__all__ = ["Engine", "Limits", "LimitExceeded", "Matcher", "Part", "SeriesData", "Result", "parse_matchers"]
