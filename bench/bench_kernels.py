"""The serving path's compiled kernels against their pure-Python / plain-numpy oracles, on the
same data in the same run: XOR chunk encoding (query_gateway.fastxor vs query_gateway.xor) and
raw value decoding from Arrow buffers (blocks.encoding.decode_arrow vs decode_values).

    python bench/bench_kernels.py [--samples N]

Data: counter-like values with two decimals at 60 s +-50 ms jitter, 1,440 samples per series
(one day), the shape of the dashboard bench's node_cpu_seconds_total.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from blocks.encoding import decode_values, encode_values  # noqa: E402
from blocks.reader import decode_raw  # noqa: E402
from query_gateway.fastxor import encode_runs, warm_up  # noqa: E402
from query_gateway.xor import SAMPLES_PER_CHUNK, encode_xor  # noqa: E402


def best_of(fn, runs: int = 5) -> float:
    """Fastest CPU time of `runs` calls (seconds)."""
    times = []
    for _ in range(runs):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--samples", type=int, default=3_801_600)
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    n = args.samples
    ts = np.arange(n, dtype=np.int64) * 60_000 + rng.integers(-50, 50, n)
    values = np.round(np.cumsum(rng.random(n) * 3), 2)
    starts = np.arange(0, n, 1440, dtype=np.int64)
    ends = np.r_[starts[1:], n]
    warm_up()
    print(f"{n:,} samples in runs of 1,440; CPU seconds, best of 5")

    fast = best_of(lambda: encode_runs(ts, values, starts, ends))
    m = 12_000  # the pure-Python oracle on a slice (it does ~0.25 M samples/s), scaled per sample
    slow = best_of(lambda: [encode_xor(ts[a:a + SAMPLES_PER_CHUNK].tolist(), values[a:a + SAMPLES_PER_CHUNK].tolist())
                            for a in range(0, m, SAMPLES_PER_CHUNK)], runs=1) * n / m
    print(f"XOR encode      compiled {fast:7.3f} s ({n / fast / 1e6:6.1f} M samples/s)   "
          f"pure Python {slow:8.2f} s (scaled from {m:,})   speed-up {slow / fast:6.0f}x")

    fv, f_valid, mant, m_valid, scale = encode_values(values, np.repeat(np.arange(len(starts)), ends - starts))
    table = pa.table({"series_ref": pa.array(np.zeros(n, np.uint32)), "ts": pa.array(ts),
                      "value": pa.array(fv, mask=~f_valid), "value_mantissa": pa.array(mant, mask=~m_valid),
                      "value_scale": pa.array(scale, mask=~m_valid)})

    def oracle():
        cols = [table.column(c) for c in ("value", "value_mantissa", "value_scale")]
        decode_values(cols[0].fill_null(0.0).to_numpy(), cols[1].fill_null(0).to_numpy(),
                      cols[1].is_valid().to_numpy(zero_copy_only=False), cols[2].fill_null(0).to_numpy())

    fast = best_of(lambda: decode_raw(table))
    slow = best_of(oracle)
    print(f"value decode    compiled {fast:7.3f} s ({n / fast / 1e6:6.1f} M samples/s)   "
          f"numpy      {slow:8.3f} s ({n / slow / 1e6:6.1f} M samples/s)   speed-up {slow / fast:6.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
