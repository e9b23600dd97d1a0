"""`strata compact`: the nightly job."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from blocks.cli_common import (
    EXIT_HALT, EXIT_RETRY, BucketOpt, ConfigOpt, Output, OutputOpt, cli_errors, fmt_bytes, is_tty,
    load_store_config, parse_duration_ms, parse_time_ms, render,
)
from blocks.errors import InvalidInputError
from blocks.objstore import open_store
from blocks.selectors import parse_selector
from blocks.units import parse_bytes
from blocks.writer import WriterOptions
from compactor.execute import ExecOptions
from compactor.nightly import CompactorConfig, Summary, run_once

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


def metrics_text(s: Summary, now_ms: int, exit_code: int) -> str:
    """The pass's summary as Prometheus text exposition (for the node-exporter textfile collector)."""
    lines = ["# HELP strata_compact_last_run_timestamp_seconds When the last pass finished.",
             "# TYPE strata_compact_last_run_timestamp_seconds gauge",
             f"strata_compact_last_run_timestamp_seconds {now_ms / 1000:.3f}",
             "# HELP strata_compact_last_exit_code Exit code of the last pass (0 ok, 3 halt, 75 retry).",
             "# TYPE strata_compact_last_exit_code gauge",
             f"strata_compact_last_exit_code {exit_code}"]
    if exit_code == 0:
        lines += ["# HELP strata_compact_last_success_timestamp_seconds When the last successful pass finished.",
                  "# TYPE strata_compact_last_success_timestamp_seconds gauge",
                  f"strata_compact_last_success_timestamp_seconds {now_ms / 1000:.3f}"]
    by_res: dict[str, list[int]] = {}
    for b in s.compacted + s.downsampled:
        acc = by_res.setdefault(b["resolution"], [0, 0, 0])
        acc[0] += 1
        acc[1] += b["samples"]
        acc[2] += b["bytes"]
    lines += ["# HELP strata_compact_blocks_written Blocks written by the last pass.",
              "# TYPE strata_compact_blocks_written gauge"]
    lines += [f'strata_compact_blocks_written{{resolution="{r}"}} {v[0]}' for r, v in sorted(by_res.items())]
    lines += ["# HELP strata_compact_samples_written Raw samples covered by blocks written in the last pass.",
              "# TYPE strata_compact_samples_written gauge"]
    lines += [f'strata_compact_samples_written{{resolution="{r}"}} {v[1]}' for r, v in sorted(by_res.items())]
    lines += ["# HELP strata_compact_bytes_written Bytes of blocks written in the last pass.",
              "# TYPE strata_compact_bytes_written gauge"]
    lines += [f'strata_compact_bytes_written{{resolution="{r}"}} {v[2]}' for r, v in sorted(by_res.items())]
    lines += ["# HELP strata_compact_halted_groups Groups marked no-compact in the last pass.",
              "# TYPE strata_compact_halted_groups gauge", f"strata_compact_halted_groups {len(s.halted)}",
              "# HELP strata_compact_blocks_deleted Blocks removed in the last pass.",
              "# TYPE strata_compact_blocks_deleted gauge", f"strata_compact_blocks_deleted {len(s.deleted)}",
              "# HELP strata_compact_duration_seconds Duration of the last pass by phase.",
              "# TYPE strata_compact_duration_seconds gauge"]
    lines += [f'strata_compact_duration_seconds{{phase="{p}"}} {v}' for p, v in sorted(s.seconds.items())]
    lines += ["# HELP strata_bucket_newest_block_end_seconds End of the newest live block per resolution (downsampling lag = now - this).",
              "# TYPE strata_bucket_newest_block_end_seconds gauge"]
    lines += [f'strata_bucket_newest_block_end_seconds{{resolution="{r}"}} {v / 1000:.3f}'
              for r, v in sorted(s.newest_ms.items())]
    retained = s.retention.get("tenants", {}).values()
    lines += ["# HELP strata_retention_blocks_waiting Blocks past retention waiting for a coarser tier (safety rule).",
              "# TYPE strata_retention_blocks_waiting gauge",
              f"strata_retention_blocks_waiting {sum(len(r['waiting']) for r in retained)}"]
    lines += ["# HELP strata_objstore_requests Object-store requests of the last pass by kind.",
              "# TYPE strata_objstore_requests gauge"]
    lines += [f'strata_objstore_requests{{kind="{k}"}} {v}'
              for k, v in sorted(s.requests.get("requests", {}).items())]
    return "\n".join(lines) + "\n"


def push_metrics(url: str, text: str, shard: str = "") -> None:
    """PUT the exposition to a Pushgateway (replaces the group's metrics); failures are logged, not fatal."""
    import urllib.error
    import urllib.request

    target = url.rstrip("/") + "/metrics/job/strata_compact" + (f"/shard/{shard}" if shard else "")
    req = urllib.request.Request(target, data=text.encode(), method="PUT",
                                 headers={"Content-Type": "text/plain; version=0.0.4"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
    except (urllib.error.URLError, OSError) as e:
        sys.stderr.write(json.dumps({"event": "pushgateway_error", "url": target, "error": str(e)}) + "\n")


def _text(d: dict) -> str:
    lines = []
    for c in d["compacted"]:
        lines.append(f"compacted {len(c['sources'])} raw blocks -> {c['tenant']}/{c['ulid']} "
                     f"({c['samples']:,} samples, {fmt_bytes(c['bytes'])}, "
                     f"{c['identical_dropped']:,} duplicate samples dropped)")
    for x in d["downsampled"]:
        lines.append(f"downsampled {x['source']} -> {x['resolution']} {x['tenant']}/{x['ulid']} "
                     f"({x['rows']:,} windows of {x['samples']:,} samples, {fmt_bytes(x['bytes'])})")
    lines += [f"skipped {k['job']}: {k['reason']}" for k in d["skipped"]]
    lines += [f"deleted {b}" for b in d["deleted"]]
    lines += [f"removed unfinished upload {b}" for b in d["cleaned_unfinished"]]
    for tenant, r in sorted(d.get("retention", {}).get("tenants", {}).items()):
        lines.append(f"retention {tenant}: {len(r['marked'])} blocks marked, {len(r['rewritten'])} rewritten, "
                     f"{len(r['removed'])} removed ({fmt_bytes(r['bytes_freed'])} freed), {len(r['waiting'])} waiting")
        lines += [f"  waiting {w}" for w in r["waiting"]]
    lines += [f"HALT {h['job']}: {h['reason']} (marked no-compact)" for h in d["halted"]]
    lines += [f"RETRY {r}" for r in d["retry"]]
    req = d["requests"].get("requests", {})
    lines.append(f"summary: {len(d['compacted'])} compactions, {len(d['downsampled'])} downsampled blocks, "
                 f"{len(d['deleted'])} deleted; object-store requests {json.dumps(req, sort_keys=True)}; "
                 f"seconds {json.dumps(d['seconds'], sort_keys=True)}")
    return "\n".join(lines)


def _emitter():
    """JSON log lines on stderr when not on a terminal; a live status line when on one."""
    if is_tty():
        from rich.console import Console

        console = Console(stderr=True)
        status = console.status("strata compact: planning")
        status.start()

        def emit(event: str, **fields) -> None:
            if event in ("compact", "downsample"):
                status.update(f"strata compact: {event} {fields.get('job', '')}")
            elif event in ("halt", "retry"):
                console.print(f"[red]{event}[/red] {fields}")

        return emit, status.stop

    def emit(event: str, **fields) -> None:
        sys.stderr.write(json.dumps({"ts": round(time.time(), 3), "event": event, **fields}) + "\n")

    return emit, lambda: None


@cli_errors
def compact_cmd(bucket: BucketOpt = None, config: ConfigOpt = None,
                once: Annotated[bool, typer.Option("--once", help="Run one pass and exit (the CronJob mode; the only mode).")] = True,
                shard: Annotated[Optional[str], typer.Option(help="i/n: this pod's share of (tenant, group, day) work; default from JOB_COMPLETION_INDEX/JOB_COMPLETIONS.")] = None,
                dedup_replica_label: Annotated[Optional[str], typer.Option(help="Deduplicate HA replicas that differ only in this label.")] = None,
                downsample_exclude: Annotated[Optional[list[str]], typer.Option(help='Series selector kept out of downsampling, e.g. \'{__name__=~"go_.*"}\'; repeatable.')] = None,
                memory_budget: Annotated[str, typer.Option(help="Peak memory the merge may use (sets partition size).")] = "1GiB",
                scratch_dir: Annotated[Optional[Path], typer.Option(help="Scratch space for partitions and block files (an emptyDir).")] = None,
                deletion_delay: Annotated[str, typer.Option(help="Marked blocks are removed after this delay.")] = "48h",
                grace: Annotated[str, typer.Option(help="A range is closed this long after its end.")] = "1h",
                lease_ttl: Annotated[str, typer.Option(help="A job's lease expires this long after its holder's last renewal (it renews every third of it while the job runs).")] = "2m",
                metrics_textfile: Annotated[Optional[Path], typer.Option(help="Write the summary as Prometheus metrics to this file.")] = None,
                pushgateway: Annotated[Optional[str], typer.Option(help="Push the summary metrics to this Pushgateway URL (job strata_compact).")] = None,
                now: Annotated[Optional[str], typer.Option(help="Pretend it is this time (ms or ISO-8601); for tests and backfills.")] = None,
                output: OutputOpt = Output.text) -> None:
    """One pass of the nightly job: compact raw blocks into days, downsample raw->5m->1h->1d,
    remove blocks whose deletion delay has passed, clean unfinished uploads.

    Exit 0 on success, 3 if any group was marked no-compact (integrity), 75 if a transient error
    left work undone (retry).
    """
    store = open_store(load_store_config(bucket, config))
    i, n = parse_shard(shard)
    selectors = [parse_selector(x) for x in downsample_exclude or []]
    scratch = str(scratch_dir) if scratch_dir else None
    execution = ExecOptions(
        writer=WriterOptions(scratch_dir=scratch),
        partition_rows=max(10_000, parse_bytes(memory_budget) // BYTES_PER_PARTITION_ROW),
        scratch_dir=scratch, dedup_replica_label=dedup_replica_label,
        downsample_exclude=(lambda labels: any(sel.matches(labels) for sel in selectors)) if selectors else None)
    cfg = CompactorConfig(grace_ms=parse_duration_ms(grace), deletion_delay_ms=parse_duration_ms(deletion_delay),
                          shard=i, shards=n, execution=execution,
                          lease_ttl_ms=parse_duration_ms(lease_ttl))
    now_ms = parse_time_ms(now) if now else int(time.time() * 1000)
    emit, stop = _emitter()
    try:
        summary = run_once(store, now_ms, cfg, emit=emit)
    finally:
        stop()
    # Work skipped because another live run held its lease is work left undone: 75, retry.
    code = EXIT_HALT if summary.halted else EXIT_RETRY if summary.retry or summary.leased else 0
    if metrics_textfile is not None:
        tmp = metrics_textfile.with_suffix(metrics_textfile.suffix + ".tmp")
        tmp.write_text(metrics_text(summary, int(time.time() * 1000), code))
        tmp.replace(metrics_textfile)
    if pushgateway is not None:
        push_metrics(pushgateway, metrics_text(summary, int(time.time() * 1000), code), f"{i}" if n > 1 else "")
    render(output, summary.as_dict(), _text)
    if code:
        raise typer.Exit(code)
