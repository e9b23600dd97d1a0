"""The synthetic data generator: deterministic, realistic shapes, formats agree."""

from __future__ import annotations

import numpy as np

from blocks.objstore import MemoryStore
from blocks.reader import load_listing, read_raw_samples
from ingest.generate import SERIES_PER_HOST, GenSpec, generate_prepared, write_openmetrics, write_parquet_long
from ingest.importer import import_files

SPEC = GenSpec(series=98, hours=6, step_s=15, seed=7, start_ms=1_800_000_000_000 // 7_200_000 * 7_200_000)


def test_deterministic(tmp_path):
    write_openmetrics(SPEC, tmp_path / "a.om")
    write_openmetrics(SPEC, tmp_path / "b.om")
    assert (tmp_path / "a.om").read_bytes() == (tmp_path / "b.om").read_bytes()
    other = GenSpec(**{**SPEC.__dict__, "seed": 8})
    write_openmetrics(other, tmp_path / "c.om")
    assert (tmp_path / "a.om").read_bytes() != (tmp_path / "c.om").read_bytes()


def test_all_outputs_hold_the_same_samples(tmp_path):
    write_openmetrics(SPEC, tmp_path / "a.om")
    write_parquet_long(SPEC, tmp_path / "a.parquet")
    prep = generate_prepared(SPEC)
    assert len(prep.series) == 2 * SERIES_PER_HOST and len(prep.ts) == 2 * SERIES_PER_HOST * SPEC.steps
    results = []
    for path in ("a.om", "a.parquet"):
        store = MemoryStore()
        import_files(store, "t", [tmp_path / path], now_ms=1)
        metas = load_listing(store, "t").metas
        parts = [read_raw_samples(store, m) for m in metas]
        results.append(np.concatenate([p.column("value").to_numpy() for p in parts]).view(np.uint64))
    assert np.array_equal(results[0], results[1])


def test_realistic_shapes():
    prep = generate_prepared(GenSpec(series=49 * 4, hours=48, step_s=15, seed=3, start_ms=0))
    by_name: dict[str, list[int]] = {}
    for i, s in enumerate(prep.series):
        by_name.setdefault(dict(s)["__name__"], []).append(i)
    counters = [i for n, idx in by_name.items() if n.endswith(("_total", "_bucket", "_count")) for i in idx]
    resets = 0
    for i in counters:
        v = prep.values[prep.rank == i]
        resets += int(np.count_nonzero(np.diff(v) < 0))
    assert resets > 0, "counters should see occasional resets"
    cpu = prep.values[prep.rank == by_name["node_cpu_seconds_total"][0]]
    assert np.all(np.round(cpu * 100) / 100 == cpu)  # two decimals, like USER_HZ
    q = [i for i in by_name["rpc_duration_seconds"]]
    assert any(np.isnan(prep.values[prep.rank == i]).any() for i in q)
    types = dict(zip((dict(s)["__name__"] for s in prep.series), prep.types))
    assert types["http_request_duration_seconds_bucket"] == "histogram"
    assert types["node_load1"] == "gauge" and types["rpc_duration_seconds_sum"] == "summary"
