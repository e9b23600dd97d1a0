"""A pass's outcome for operators: its exit code, Prometheus text exposition, the Pushgateway,
shard parsing and SIGTERM handling (no typer: the `strata compact` command renders these)."""

from __future__ import annotations

import os
import signal

from blocks.log import log
from blocks.errors import EXIT_ERROR, EXIT_HALT, EXIT_OK, EXIT_RETRY, InvalidInputError
from compactor.nightly import Summary

BYTES_PER_PARTITION_ROW = 300  # measured ~210 B per partition row above a ~160 MiB base (bench/bench_compact.py), plus headroom


def parse_shard(text: str | None) -> tuple[int, int]:
    """'i/n' -> (i, n); default from JOB_COMPLETION_INDEX / JOB_COMPLETIONS (Indexed Jobs)."""
    if text is None:
        idx, n = os.environ.get("JOB_COMPLETION_INDEX"), os.environ.get("JOB_COMPLETIONS")
        if idx is None or n is None:
            return 0, 1
        text = f"{idx}/{n}"
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise InvalidInputError(f"invalid shard {text!r}: use i/n, e.g. 0/3") from None
    if not 0 <= i < n:
        raise InvalidInputError(f"invalid shard {text!r}: need 0 <= i < n")
    return i, n


class Terminated(BaseException):
    """SIGTERM (a pod being stopped): unwinds the pass so its metrics are still written."""


def _terminated(signum, frame) -> None:
    raise Terminated("terminated by SIGTERM; the next run resumes")


def _on_sigterm(handler):
    try:
        return signal.signal(signal.SIGTERM, handler)
    except (ValueError, TypeError):  # not the main thread (an embedding test): leave it alone
        return None


def exit_code(s: Summary) -> int:
    """1 if anything failed unexpectedly, 3 if a block was marked or the policy has problems,
    75 if a transient error or another run's live lease left work undone, else 0."""
    if s.errors:
        return EXIT_ERROR
    if s.halted or s.policy_problems:
        return EXIT_HALT
    return EXIT_RETRY if s.retry or s.leased else EXIT_OK


def metrics_text(s: Summary, now_ms: int, exit_code: int, push_failed: bool = False) -> str:
    """The pass's summary as Prometheus text exposition (for the node-exporter textfile collector
    and the Pushgateway), written through prometheus_client like the gateway's and receiver's."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily

    families: list[GaugeMetricFamily] = []

    def gauge(name: str, help_: str, value: float | None = None, label: str | None = None, items=()) -> None:
        if label is None:
            families.append(GaugeMetricFamily(name, help_, value=value))
            return
        fam = GaugeMetricFamily(name, help_, labels=[label])
        for key, v in items:
            fam.add_metric([key], v)
        families.append(fam)

    gauge("strata_compact_last_run_timestamp_seconds", "When the last pass finished.", now_ms / 1000)
    gauge("strata_compact_last_exit_code", "Exit code of the last pass (0 ok, 1 error, 3 halt, 75 retry).", exit_code)
    if exit_code == 0:
        gauge("strata_compact_last_success_timestamp_seconds", "When the last successful pass finished.", now_ms / 1000)
    by_res: dict[str, list[int]] = {}
    for b in s.compacted + s.downsampled:
        acc = by_res.setdefault(b["resolution"], [0, 0, 0])
        acc[0] += 1
        acc[1] += b["samples"]
        acc[2] += b["bytes"]
    written = sorted(by_res.items())
    gauge("strata_compact_blocks_written", "Blocks written by the last pass.", label="resolution",
          items=[(r, v[0]) for r, v in written])
    gauge("strata_compact_samples_written", "Raw samples covered by blocks written in the last pass.",
          label="resolution", items=[(r, v[1]) for r, v in written])
    gauge("strata_compact_bytes_written", "Bytes of blocks written in the last pass.", label="resolution",
          items=[(r, v[2]) for r, v in written])
    gauge("strata_compact_halted_groups", "Groups marked no-compact in the last pass.", len(s.halted))
    gauge("strata_compact_no_compact_blocks", "Blocks carrying a no-compact mark (need an operator).", s.no_compact_blocks)
    gauge("strata_compact_errors", "Unexpected errors in the last pass (the other tenants went on).", len(s.errors))
    gauge("strata_compact_retries", "Work left for a retry by transient errors in the last pass.", len(s.retry))
    gauge("strata_compact_leased_jobs", "Jobs skipped because another live run held their lease.", len(s.leased))
    gauge("strata_retention_policy_problems", "Bad entries in the stored retention policy (each holds what it names).",
          len(s.policy_problems))
    gauge("strata_compact_push_failed", "1 if the last pass could not push to the Pushgateway.", int(push_failed))
    gauge("strata_compact_blocks_deleted", "Blocks removed in the last pass.", len(s.deleted))
    gauge("strata_compact_duration_seconds", "Duration of the last pass by phase.", label="phase",
          items=sorted(s.seconds.items()))
    gauge("strata_bucket_newest_block_end_seconds",
          "End of the newest live block per resolution (downsampling lag = now - this).", label="resolution",
          items=[(r, v / 1000) for r, v in sorted(s.newest_ms.items())])
    gauge("strata_bucket_blocks", "Blocks not marked for deletion after the last pass, by resolution.",
          label="resolution", items=sorted(s.live_blocks.items()))
    gauge("strata_bucket_bytes", "Bytes of the blocks not marked for deletion, by resolution.", label="resolution",
          items=sorted(s.live_bytes.items()))
    retained = s.retention.get("tenants", {}).values()
    gauge("strata_retention_blocks_waiting", "Blocks past retention waiting for a coarser tier (safety rule).",
          sum(len(r["waiting"]) for r in retained))
    gauge("strata_objstore_requests", "Object-store requests of the last pass by kind.", label="kind",
          items=sorted(s.requests.get("requests", {}).items()))

    class _Pass:
        def collect(self):
            return families

    registry = CollectorRegistry()
    registry.register(_Pass())
    return generate_latest(registry).decode()


def push_metrics(url: str, text: str, shard: str = "") -> bool:
    """PUT the exposition to a Pushgateway (replaces the group's metrics); False (and a log line) if it failed.

    The failure shows as `strata_compact_push_failed` in the textfile and, under --require-push,
    as exit 1 of an otherwise successful pass.
    """
    import urllib.error
    import urllib.request

    target = url.rstrip("/") + "/metrics/job/strata_compact" + (f"/shard/{shard}" if shard else "")
    req = urllib.request.Request(target, data=text.encode(), method="PUT",
                                 headers={"Content-Type": "text/plain; version=0.0.4"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        log("compactor", "pushgateway_error", "warn", url=target, error=str(e))
        return False
    return True


