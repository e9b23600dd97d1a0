"""The receiver's /metrics (prometheus-client, one registry per receiver)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily


class ReceiverMetrics:
    """Samples in and refused, WAL traffic, head size, seals."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("strata_receive_requests", "Remote-write requests by HTTP status.", ["code"], registry=r)
        self.samples = Counter("strata_receive_samples", "Samples accepted (in the WAL and head).", ["tenant"], registry=r)
        self.rejected = Counter("strata_receive_samples_rejected", "Samples refused, by reason.", ["reason"], registry=r)
        self.exemplars = Counter("strata_receive_exemplars_ignored", "Exemplars received and not stored.", registry=r)
        self.fsync = Histogram("strata_receive_wal_fsync_duration_seconds", "WAL fsync latency (its count is the fsyncs).",
                               registry=r, buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))
        self.wal_corruptions = Counter("strata_receive_wal_corruptions", "WAL damage found on replay (torn tail, corrupt record).",
                                       ["kind"], registry=r)
        self.replay_seconds = Gauge("strata_receive_wal_replay_duration_seconds", "How long the last WAL replay took.", registry=r)
        self.seal_seconds = Histogram("strata_receive_seal_duration_seconds", "Time to seal one block (snapshot, write, upload, WAL cleanup).",
                                      registry=r, buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.blocks = Counter("strata_receive_blocks_sealed", "Raw blocks sealed.", ["tenant"], registry=r)
        self.sealed_samples = Counter("strata_receive_sealed_samples", "Samples written into sealed blocks.", ["tenant"], registry=r)
        self.seal_failures = Counter("strata_receive_seal_failures", "Seal attempts that failed (retried next round).", registry=r)
        self.receiver = None

    def bind(self, receiver) -> None:
        """Gauges read from this receiver at scrape time."""
        if self.receiver is None:
            self.receiver = receiver
            self.registry.register(_State(receiver))

    def sealed(self, tenant: str, meta, seconds: float) -> None:
        """Count one sealed block."""
        self.blocks.labels(tenant).inc()
        self.sealed_samples.labels(tenant).inc(meta.stats.samples)
        self.seal_seconds.observe(seconds)

    def exposition(self) -> bytes:
        """Text exposition format."""
        return generate_latest(self.registry)


class _State:
    def __init__(self, receiver) -> None:
        self.r = receiver

    def collect(self):
        r = self.r
        wal = r.wal
        g = GaugeMetricFamily("strata_receive_wal_bytes", "Bytes in WAL segments on disk.")
        g.add_metric([], wal.bytes_on_disk() if wal else 0)
        yield g
        g = GaugeMetricFamily("strata_receive_wal_segment", "Number of the WAL segment being written.")
        g.add_metric([], wal.segment if wal else 0)
        yield g
        g = GaugeMetricFamily("strata_receive_head_bytes", "Approximate head memory (the --max-head-bytes limit applies to it).")
        g.add_metric([], r.head_bytes())
        yield g
        series = GaugeMetricFamily("strata_receive_head_series", "Series in the head.", labels=["tenant"])
        samples = GaugeMetricFamily("strata_receive_head_samples", "Unsealed samples in the head.", labels=["tenant"])
        sealed = GaugeMetricFamily("strata_receive_sealed_until_seconds",
                                   "Samples of a tenant before this time are sealed into blocks; older ones are refused.",
                                   labels=["tenant"])
        newest = GaugeMetricFamily("strata_receive_head_max_time_seconds", "Newest sample in the head.", labels=["tenant"])
        for tenant, h in sorted(r.heads.items()):
            series.add_metric([tenant], len(h.table))
            samples.add_metric([tenant], h.samples)
            if h.max_ts > -(1 << 61):
                newest.add_metric([tenant], h.max_ts / 1000)
            if h.sealed_until > -(1 << 61):
                sealed.add_metric([tenant], h.sealed_until / 1000)
        yield series
        yield samples
        yield newest
        yield sealed
        g = GaugeMetricFamily("strata_receive_ready", "1 when accepting writes.")
        g.add_metric([], 1 if r.ready.is_set() else 0)
        yield g
