"""HA replica deduplication (pure): one series per replica group, gaps filled from the others.

Like Thanos's penalty-based deduplication: follow one replica (the one with the most samples,
ties to the lowest replica id) and take another replica's samples only inside gaps of the
followed one that are longer than `gap_factor` x its median scrape interval, keeping half an
interval away from the followed samples so the two streams never interleave.
"""

from __future__ import annotations

import numpy as np


def dedup_replicas(rank: np.ndarray, replica: np.ndarray, ts: np.ndarray, values: np.ndarray,
                   gap_factor: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge rows of replica series that share an output `rank`; returns sorted (rank, ts, value)."""
    if len(rank) == 0:
        return rank, ts, values
    idx = np.lexsort((ts, replica, rank))
    rank, replica, ts, values = rank[idx], replica[idx], ts[idx], values[idx]
    out_r, out_t, out_v = [], [], []
    starts = np.flatnonzero(np.r_[True, rank[1:] != rank[:-1]])
    ends = np.r_[starts[1:], len(rank)]
    for a, b in zip(starts, ends):
        reps, first_idx, counts = np.unique(replica[a:b], return_index=True, return_counts=True)
        if len(reps) == 1:
            keep_t, keep_v = _dedup_ts(ts[a:b], values[a:b])
        else:
            primary = reps[np.argmax(counts)]
            sel = replica[a:b] == primary
            pt, pv = _dedup_ts(ts[a:b][sel], values[a:b][sel])
            ot, ov = ts[a:b][~sel], values[a:b][~sel]
            interval = float(np.median(np.diff(pt))) if len(pt) > 1 else np.inf
            margin = interval / 2 if np.isfinite(interval) else 0.0
            # Position of each other-replica sample among the primary's samples.
            pos = np.searchsorted(pt, ot)
            prev_t = np.where(pos > 0, pt[np.maximum(pos - 1, 0)], -np.inf)
            next_t = np.where(pos < len(pt), pt[np.minimum(pos, len(pt) - 1)], np.inf)
            gap = next_t - prev_t
            # With a single primary sample there is no interval to judge gaps by: keep it alone
            # (it has the most samples, so every other replica has at most one too).
            inside = (gap > gap_factor * interval) & (ot - prev_t > margin) & (next_t - ot > margin)
            ft, fv = _dedup_ts(np.sort(ot[inside]), ov[inside][np.argsort(ot[inside])])
            keep_t = np.concatenate([pt, ft])
            keep_v = np.concatenate([pv, fv])
            o = np.argsort(keep_t, kind="stable")
            keep_t, keep_v = keep_t[o], keep_v[o]
            keep_t, keep_v = _dedup_ts(keep_t, keep_v)
        out_r.append(np.full(len(keep_t), rank[a], dtype=rank.dtype))
        out_t.append(keep_t)
        out_v.append(keep_v)
    return np.concatenate(out_r), np.concatenate(out_t), np.concatenate(out_v)


def _dedup_ts(ts: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop repeated timestamps (the last one wins), input sorted by ts."""
    if len(ts) < 2:
        return ts, values
    keep = np.r_[ts[1:] != ts[:-1], True]
    return ts[keep], values[keep]
