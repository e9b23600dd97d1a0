"""Sorting and deduplicating samples: identical duplicates dropped, conflicting ones last-wins."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Deduplicated:
    """Samples sorted by (series, ts) with one sample per timestamp."""

    series: np.ndarray
    ts: np.ndarray
    values: np.ndarray
    identical_dropped: int
    conflicts_last_wins: int


def sort_dedup(series: np.ndarray, ts: np.ndarray, values: np.ndarray) -> Deduplicated:
    """Stable sort by (series, ts); of samples sharing both, the last in input order wins.

    Identity of values is by bits, so NaN payloads and staleness markers compare exactly.
    """
    idx = np.lexsort((ts, series))
    series, ts, values = series[idx], ts[idx], values[idx]
    same_next = np.zeros(len(series), dtype=bool)
    same_next[:-1] = (series[1:] == series[:-1]) & (ts[1:] == ts[:-1])
    keep = ~same_next
    dropped = np.nonzero(same_next)[0]
    conflicts = 0
    if len(dropped):
        kept_idx = np.nonzero(keep)[0]
        winner = kept_idx[np.searchsorted(kept_idx, dropped)]
        bits = values.view(np.uint64)
        conflicts = int(np.count_nonzero(bits[dropped] != bits[winner]))
    return Deduplicated(series[keep], ts[keep], values[keep], int(len(dropped)) - conflicts, conflicts)
