"""Writes the golden v1 *tier* blocks (5m and 1h, from the v1 kernels); the output is committed.

Run with the code of tier format v1 (commit 26913f8); kept to document how the files were made.
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

from blocks.labels import parse_series
from blocks.objstore import open_store
from blocks.series import sort_series
from blocks.writer import BlockSpec, write_block
from compactor.nightly import run_once

root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "golden-tiers-v1")
shutil.rmtree(root, ignore_errors=True)
store = open_store(str(root))
D = 86_400_000
series = [parse_series(t) for t in ['req_total{job="a"}', 'temp{job="a"}', 'mystery{job="a"}']]
order = sort_series(series)
series = [series[i] for i in order]
types = [["counter", "gauge", "unknown"][i] for i in order]
ts = np.arange(0, D, 60_000, dtype=np.int64)
i = ts // 60_000
values = {"req_total": np.where(i < 700, i * 2.0, (i - 700) * 3.0),   # one reset at minute 700
          "temp": np.round(20 + 5 * np.sin(i / 50.0), 2),
          "mystery": (i % 97).astype(np.float64)}
refs, all_ts, all_v = [], [], []
for r, lab in enumerate(series):
    refs.append(np.full(len(ts), r, dtype=np.uint32))
    all_ts.append(ts)
    all_v.append(values[dict(lab)["__name__"]])
t = pa.table({"series_ref": np.concatenate(refs), "ts": np.concatenate(all_ts), "value": np.concatenate(all_v)})
write_block(store, BlockSpec("golden", 0, D), series, types, [t], now_ms=1_700_000_000_000)
run_once(store, D + 2 * 3_600_000)
(root / "expected.json").write_text(json.dumps({
    "series": [list(map(list, s)) for s in series],
    "samples": {dict(s)["__name__"]: [ts.tolist(), values[dict(s)["__name__"]].tolist()] for s in series}}))
