"""Deterministic synthetic Prometheus data: node-exporter-like counters, gauges, histograms, summaries.

Every (seed, host, family) gets its own RNG stream, so output is identical run to run and a
host's series do not depend on how many hosts are generated. Process restarts (shared by a
host's application families) reset its histogram and summary counters; network counters reset
on their own, rarely.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from blocks.errors import InvalidInputError
from blocks.labels import Labels, canonical_labels, format_series

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
QUANTILES = ("0.5", "0.9", "0.99")


@dataclass(frozen=True)
class GenSpec:
    """What to generate: about `series` series, `hours` long at `step_s`, from `start_ms`."""

    series: int
    hours: float
    step_s: int
    seed: int
    start_ms: int
    jitter_ms: int = 0

    def __post_init__(self) -> None:
        if self.series < 1 or self.hours <= 0 or self.step_s < 1 or self.jitter_ms < 0:
            raise InvalidInputError("generate needs series >= 1, hours > 0, step >= 1s, jitter >= 0")
        if self.jitter_ms * 2 >= self.step_s * 1000:
            raise InvalidInputError("jitter must be under half the step")

    @property
    def steps(self) -> int:
        """Samples per series."""
        return int(self.hours * 3600 // self.step_s)

    @property
    def hosts(self) -> int:
        """Hosts (targets) needed for about `series` series."""
        return max(1, round(self.series / SERIES_PER_HOST))


Series = list[tuple[Labels, np.ndarray]]


def _lbl(name: str, host: int, **extra: str) -> Labels:
    return canonical_labels({"__name__": name, "instance": f"host-{host:04d}:9100", "job": "node", **extra})


def _counter_from_increments(inc: np.ndarray, resets: np.ndarray) -> np.ndarray:
    """Cumulative sum that restarts from the increment at each reset step."""
    c = np.cumsum(inc)
    if resets.any():
        base = np.where(resets, c - inc, 0)
        c = c - np.maximum.accumulate(base)
    return c


def _restarts(spec: GenSpec, host: int) -> np.ndarray:
    rng = np.random.default_rng([spec.seed, 999, host])
    r = rng.random(spec.steps) < 1 / 4000
    r[0] = False
    return r


def _cpu(spec: GenSpec, host: int, rng: np.random.Generator) -> Series:
    out = []
    share = {"idle": 0.7, "user": 0.2, "system": 0.07, "iowait": 0.03}
    for cpu in ("0", "1"):
        for mode, s in share.items():
            centis = rng.poisson(s * spec.step_s * 100, spec.steps)  # USER_HZ ticks: 2 decimals
            start = rng.integers(10**6, 10**8)
            out.append((_lbl("node_cpu_seconds_total", host, cpu=cpu, mode=mode),
                        (start + np.cumsum(centis)) / 100))
    return out


def _network(spec: GenSpec, host: int, rng: np.random.Generator) -> Series:
    out = []
    for dev, rate in (("eth0", 2e5), ("lo", 1e4)):
        inc = rng.poisson(rate * spec.step_s, spec.steps).astype(np.float64)
        resets = rng.random(spec.steps) < 1 / 5000
        resets[0] = False
        inc[0] += rng.integers(10**9, 10**11)
        out.append((_lbl("node_network_receive_bytes_total", host, device=dev),
                    _counter_from_increments(inc, resets)))
    return out


def _memory(spec: GenSpec, host: int, rng: np.random.Generator) -> Series:
    pages = 2_000_000 + np.cumsum(rng.integers(-500, 501, spec.steps))
    return [(_lbl("node_memory_MemAvailable_bytes", host), (np.maximum(pages, 1000) * 4096).astype(np.float64))]


def _load(spec: GenSpec, host: int, rng: np.random.Generator) -> Series:
    hundredths = np.abs(150 + np.cumsum(rng.integers(-5, 6, spec.steps)))
    return [(_lbl("node_load1", host), hundredths / 100)]


def _filesystem(spec: GenSpec, host: int, rng: np.random.Generator) -> Series:
    return [(_lbl("node_filesystem_size_bytes", host, mountpoint=m),
             np.full(spec.steps, float(rng.integers(10, 1000) * 2**30))) for m in ("/", "/var")]


def _goroutines(spec: GenSpec, host: int, rng: np.random.Generator) -> Series:
    g = np.maximum(1, 40 + np.cumsum(rng.integers(-2, 3, spec.steps)))
    return [(_lbl("go_goroutines", host), g.astype(np.float64))]


def _latency_ewma(spec: GenSpec, host: int, rng: np.random.Generator) -> Series:
    # A full-precision float gauge (an EWMA an application computes): the incompressible case.
    x = 0.05 + np.cumsum(rng.normal(0, 1e-3, spec.steps))
    return [(_lbl("app_queue_latency_seconds", host), np.abs(x))]


def _histogram(spec: GenSpec, host: int, rng: np.random.Generator) -> Series:
    out = []
    restarts = _restarts(spec, host)
    edges = np.array(BUCKETS)
    probs = np.diff(np.concatenate([[0.0], 1 - np.exp(-edges / 0.2), [1.0]]))
    for handler, rate in (("/api", 5.0), ("/health", 0.5)):
        k = rng.poisson(rate * spec.step_s, spec.steps)
        per_bucket = rng.multinomial(k, probs)  # (steps, len(BUCKETS)+1)
        cum = np.cumsum(per_bucket, axis=1)
        for j, le in enumerate(list(BUCKETS) + [float("inf")]):
            le_text = "+Inf" if le == float("inf") else repr(le)
            out.append((_lbl("http_request_duration_seconds_bucket", host, handler=handler, le=le_text),
                        _counter_from_increments(cum[:, j].astype(np.float64), restarts)))
        durations = k * 0.2 + rng.normal(0, 0.05, spec.steps) * np.sqrt(k)
        out.append((_lbl("http_request_duration_seconds_sum", host, handler=handler),
                    _counter_from_increments(np.abs(durations), restarts)))
        out.append((_lbl("http_request_duration_seconds_count", host, handler=handler),
                    _counter_from_increments(k.astype(np.float64), restarts)))
    return out


def _summary(spec: GenSpec, host: int, rng: np.random.Generator) -> Series:
    restarts = _restarts(spec, host)
    k = rng.poisson(0.3 * spec.step_s, spec.steps)
    out = []
    for q, base in zip(QUANTILES, (0.05, 0.2, 0.8)):
        v = base * np.exp(rng.normal(0, 0.1, spec.steps))
        v[k == 0] = np.nan  # no observations in the window: quantiles are NaN, as client libraries do
        out.append((_lbl("rpc_duration_seconds", host, quantile=q, service="rpc"), v))
    out.append((_lbl("rpc_duration_seconds_sum", host, service="rpc"),
                _counter_from_increments(k * 0.1 * np.exp(rng.normal(0, 0.05, spec.steps)), restarts)))
    out.append((_lbl("rpc_duration_seconds_count", host, service="rpc"),
                _counter_from_increments(k.astype(np.float64), restarts)))
    return out


# (family, type, help, generator); order is the OpenMetrics output order.
FAMILIES: list[tuple[str, str, str, Callable[[GenSpec, int, np.random.Generator], Series]]] = [
    ("app_queue_latency_seconds", "gauge", "EWMA of queue latency.", _latency_ewma),
    ("go_goroutines", "gauge", "Number of goroutines.", _goroutines),
    ("http_request_duration_seconds", "histogram", "Request latency.", _histogram),
    ("node_cpu_seconds_total", "counter", "CPU time per mode.", _cpu),
    ("node_filesystem_size_bytes", "gauge", "Filesystem size.", _filesystem),
    ("node_load1", "gauge", "1m load average.", _load),
    ("node_memory_MemAvailable_bytes", "gauge", "Available memory.", _memory),
    ("node_network_receive_bytes_total", "counter", "Bytes received.", _network),
    ("rpc_duration_seconds", "summary", "RPC latency.", _summary),
]
SERIES_PER_HOST = 1 + 1 + 28 + 8 + 2 + 1 + 1 + 2 + 5


def host_timestamps(spec: GenSpec, host: int) -> np.ndarray:
    """Scrape timestamps (ms) of one host: regular, plus optional per-scrape jitter."""
    ts = spec.start_ms + np.arange(spec.steps, dtype=np.int64) * spec.step_s * 1000
    if spec.jitter_ms:
        rng = np.random.default_rng([spec.seed, 998, host])
        ts = ts + rng.integers(-spec.jitter_ms, spec.jitter_ms + 1, spec.steps)
    return ts


def iter_family(spec: GenSpec, fam_index: int) -> Iterator[tuple[int, Series]]:
    """(host, series) for every host of one family."""
    gen = FAMILIES[fam_index][3]
    for host in range(spec.hosts):
        yield host, gen(spec, host, np.random.default_rng([spec.seed, fam_index, host]))


def family_type(fam_index: int, metric_name: str) -> str:
    """Metric type of a generated series."""
    return FAMILIES[fam_index][1]


def _format_values(values: np.ndarray) -> pl.Series:
    s = pl.Series(values).cast(pl.String)
    return s.replace({"inf": "+Inf", "-inf": "-Inf"})


def _format_om_ts(ts: np.ndarray) -> pl.Series:
    s = pl.Series(ts)
    return (s // 1000).cast(pl.String) + "." + (s % 1000).cast(pl.String).str.pad_start(3, "0")


def write_openmetrics(spec: GenSpec, path: Path) -> int:
    """Write OpenMetrics text (timestamps in seconds, exact to the ms); returns samples written."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for fi, (family, kind, help_text, _) in enumerate(FAMILIES):
            f.write(f"# HELP {family} {help_text}\n# TYPE {family} {kind}\n")
            for host, series in iter_family(spec, fi):
                ts_text = _format_om_ts(host_timestamps(spec, host))
                for labels, values in series:
                    head = format_series(labels) + " "
                    lines = (head + _format_values(values) + " " + ts_text)
                    f.write("\n".join(lines.to_list()))
                    f.write("\n")
                    n += len(values)
        f.write("# EOF\n")
    return n


def write_parquet_long(spec: GenSpec, path: Path) -> int:
    """Write the Parquet long format (metric, labels text, ts ms, value); returns samples written."""
    schema = pa.schema([("metric", pa.string()), ("labels", pa.string()), ("ts", pa.int64()),
                        ("value", pa.float64())])
    n = 0
    with pq.ParquetWriter(str(path), schema, compression="zstd") as w:
        for fi in range(len(FAMILIES)):
            for host, series in iter_family(spec, fi):
                ts = host_timestamps(spec, host)
                for labels, values in series:
                    text = format_series(labels)
                    name, _, rest = text.partition("{")
                    w.write_table(pa.table({"metric": [name] * len(values),
                                            "labels": ["{" + rest] * len(values) if rest else ["{}"] * len(values),
                                            "ts": ts, "value": values}, schema=schema))
                    n += len(values)
    return n


def generate_prepared(spec: GenSpec):
    """All generated samples as an importer PreparedSamples (for writing straight to a bucket)."""
    from ingest.importer import PreparedSamples
    from blocks.series import block_order

    labels_list: list[Labels] = []
    types: list[str] = []
    ts_parts, val_parts, sid_parts = [], [], []
    for fi in range(len(FAMILIES)):
        for host, series in iter_family(spec, fi):
            ts = host_timestamps(spec, host)
            for labels, values in series:
                sid_parts.append(np.full(len(values), len(labels_list), dtype=np.int64))
                labels_list.append(labels)
                types.append(FAMILIES[fi][1])
                ts_parts.append(ts)
                val_parts.append(values)
    order, rank_of = block_order(labels_list)
    rank = rank_of[np.concatenate(sid_parts)]
    ts = np.concatenate(ts_parts)
    values = np.concatenate(val_parts)
    idx = np.lexsort((ts, rank))
    return PreparedSamples([labels_list[i] for i in order], [types[i] for i in order],
                           rank[idx], ts[idx], values[idx], 0, 0)
