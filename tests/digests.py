"""Content digests of a bucket's live blocks per resolution: equal buckets hold the same samples
and windows, whatever their block ids, layout or the order things happened in."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from blocks.meta import Resolution
from blocks.reader import iter_row_groups, load_listing, read_raw_samples, read_series
from blocks.series import series_labels
from blocks.tiers import decode_windows


def digests(store, tenant: str = "t") -> dict[str, str]:
    """Per resolution, a digest of the content of the live blocks (ids and layout aside)."""
    listing = load_listing(store, tenant)
    rows: dict[str, list] = {}
    for m in listing.metas:
        if m.ulid in listing.deletion_marks:
            continue
        labels = series_labels(read_series(store, m))
        acc = rows.setdefault(m.resolution.label, [])
        if m.resolution == Resolution.RAW:
            t = read_raw_samples(store, m)
            for r, ts, v in zip(t["series_ref"].to_pylist(), t["ts"].to_pylist(),
                                t["value"].to_numpy().view(np.uint64).tolist()):
                acc.append((labels[r], ts, v))
        else:
            w = decode_windows(pa.concat_tables(list(iter_row_groups(store, m))), m.resolution_ms, m.version)
            cols = w.logical()
            names = sorted(c for c in cols if c != "series_ref")
            for i, r in enumerate(cols["series_ref"].tolist()):
                acc.append((labels[r],) + tuple(np.asarray(cols[c][i]).tobytes().hex() for c in names))
    return {res: hashlib.sha256(repr(sorted(v)).encode()).hexdigest() for res, v in rows.items()}


