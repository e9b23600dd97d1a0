"""The gateway's own /metrics (prometheus-client, one registry per gateway)."""

from __future__ import annotations


from blocks.log import log
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class GatewayMetrics:
    """Request counts/latencies per API and outcome; blocks cached; object-store traffic."""

    def __init__(self, engine) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("strata_gateway_requests", "Requests by API and outcome.", ["api", "code"],
                                registry=self.registry)
        self.latency = Histogram("strata_gateway_request_duration_seconds", "Request latency by API.", ["api"],
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.series = Counter("strata_gateway_series_returned", "Series returned by API.", ["api"],
                              registry=self.registry)
        self.samples = Counter("strata_gateway_samples_returned", "Samples or windows returned by API.", ["api"],
                               registry=self.registry)
        self.fallbacks = Counter("strata_gateway_tier_fallbacks",
                                 "Queries served (in part) from a coarser tier than they asked for, because "
                                 "nothing fine enough exists there, by API and the tier that stood in.",
                                 ["api", "tier"], registry=self.registry)
        self.tier_latency = Histogram(
            "strata_gateway_tier_request_duration_seconds",
            "Latency of read requests (remote_read, grpc_series) by API and tier read; a request that reads "
            "two tiers counts under both.", ["api", "tier"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.registry.register(_StoreCollector(engine))

    def observe(self, api: str, code: str, seconds: float) -> None:
        """Count one request."""
        self.requests.labels(api, code).inc()
        self.latency.labels(api).observe(seconds)

    def observe_tiers(self, api: str, tiers, seconds: float) -> None:
        """Latency of one read request under every tier it read."""
        for tier in set(tiers):
            self.tier_latency.labels(api, tier).observe(seconds)

    def tier_fallback(self, api: str, tenant: str, result, *, sent_as_warning: bool) -> None:
        """Count (and log) a query that a coarser tier answered in part."""
        for tier in result.plan.fallback_tiers:
            self.fallbacks.labels(api, tier.label).inc()
        for w in result.warnings:
            log_event("tier_fallback", level="warn", api=api, tenant=tenant, warning=w,
                      sent_as_warning=sent_as_warning)

    def exposition(self) -> bytes:
        """Text exposition format."""
        return generate_latest(self.registry)


def log_event(event: str, *, level: str = "info", **fields) -> None:
    """One log line of the gateway (blocks.log format)."""
    log("gateway", event, level, **fields)


class _StoreCollector:
    def __init__(self, engine) -> None:
        self.engine = engine

    def collect(self):
        g = GaugeMetricFamily("strata_gateway_blocks_loaded", "Block series tables in the cache.")
        g.add_metric([], self.engine.reader.blocks_loaded)
        yield g
        counts = getattr(self.engine.store, "counts", None)
        if counts is None:
            return
        c = CounterMetricFamily("strata_objstore_requests", "Object-store requests by kind.", labels=["kind"])
        for kind, n in sorted(counts.requests.items()):
            c.add_metric([kind], n)
        yield c
        b = CounterMetricFamily("strata_objstore_read_bytes", "Bytes read from the object store.")
        b.add_metric([], counts.bytes_read)
        yield b
