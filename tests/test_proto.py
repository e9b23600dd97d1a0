"""The committed generated modules match a fresh protoc run, and wire facts match Thanos/Prometheus."""

from __future__ import annotations

from pathlib import Path

from blocks.pb import generate
from query_gateway.pb import prom_remote_pb2, thanos_info_pb2, thanos_store_pb2, thanos_store_types_pb2

ROOT = Path(generate.__file__).parents[2]


def test_generated_code_is_current(tmp_path):
    generate.generate(tmp_path)
    for d in generate.PROTO_DIRS:
        fresh = sorted((tmp_path / d).glob("*_pb2*.py"))
        assert [p.name for p in fresh] == sorted(p.name for p in (ROOT / d).glob("*_pb2*.py")), d
        for p in fresh:
            assert p.read_text() == (ROOT / d / p.name).read_text(), f"{d}/{p.name} is stale: run python -m blocks.pb.generate"


def test_wire_names_and_field_numbers():
    store = thanos_store_pb2.DESCRIPTOR.services_by_name["Store"]
    assert store.full_name == "thanos.Store"
    assert [m.name for m in store.methods] == ["Series", "LabelNames", "LabelValues"]
    assert thanos_info_pb2.DESCRIPTOR.services_by_name["Info"].full_name == "thanos.info.Info"
    req = thanos_store_pb2.SeriesRequest.DESCRIPTOR.fields_by_name
    assert {n: req[n].number for n in ("min_time", "max_time", "matchers", "max_resolution_window", "aggregates",
                                       "skip_chunks", "query_hints", "without_replica_labels", "limit",
                                       "response_batch_size", "partial_response_strategy")} == {
        "min_time": 1, "max_time": 2, "matchers": 3, "max_resolution_window": 4, "aggregates": 5,
        "skip_chunks": 8, "query_hints": 12, "without_replica_labels": 14, "limit": 15, "response_batch_size": 16,
        "partial_response_strategy": 7}
    resp = thanos_store_pb2.SeriesResponse.DESCRIPTOR.fields_by_name
    assert {n: resp[n].number for n in ("series", "warning", "hints", "batch")} == {
        "series": 1, "warning": 2, "hints": 3, "batch": 4}
    aggr = thanos_store_types_pb2.AggrChunk.DESCRIPTOR.fields_by_name
    assert [aggr[n].number for n in ("min_time", "max_time", "raw", "count", "sum", "min", "max", "counter")] == list(range(1, 9))
    assert thanos_store_pb2.Aggr.Value("COUNTER") == 5
    assert prom_remote_pb2.ReadRequest.DESCRIPTOR.full_name == "prometheus.ReadRequest"
    assert prom_remote_pb2.ReadRequest.ResponseType.Value("STREAMED_XOR_CHUNKS") == 1
