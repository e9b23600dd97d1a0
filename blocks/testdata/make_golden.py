"""Writes the golden v1 block (run once per format version; the output is committed)."""

import json
import shutil
import struct
import sys
from pathlib import Path

import pyarrow as pa

from blocks.encoding import STALE_NAN_BITS
from blocks.labels import parse_series
from blocks.objstore import open_store
from blocks.series import sort_series
from blocks.ulid import new_ulid
from blocks.writer import BlockSpec, write_block

root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "golden-v1")
shutil.rmtree(root, ignore_errors=True)
series = [parse_series(t) for t in ['node_cpu_seconds_total{cpu="0",mode="idle"}', 'up{job="node"}',
                                    'http_requests_total{code="200"}']]
series = [series[i] for i in sort_series(series)]
stale = struct.unpack("<d", struct.pack("<Q", STALE_NAN_BITS))[0]
rows = [(0, 0, 10.0), (0, 15000, 12.5), (0, 30000, 3.0), (1, 0, 100.25), (1, 15000, 100.5),
        (1, 30000, 1 / 3), (2, 0, 1.0), (2, 15000, stale), (2, 30000, -0.0)]
t = pa.table({"series_ref": pa.array([r[0] for r in rows], pa.uint32()), "ts": [r[1] for r in rows],
              "value": [r[2] for r in rows]})
meta = write_block(open_store(str(root)), BlockSpec("golden", 0, 7_200_000), series,
                   ["counter", "gauge", "counter"], [t], now_ms=1_700_000_000_000,
                   block_id=new_ulid(1_700_000_000_000, b"golden-v1\x00"))
(root / "expected.json").write_text(json.dumps({
    "series": [list(map(list, s)) for s in series], "ts": [r[1] for r in rows],
    "value_bits": [struct.pack("<d", r[2]).hex() for r in rows]}, indent=1))
print(meta.ulid)
