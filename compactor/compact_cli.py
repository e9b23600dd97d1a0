"""`strata compact`: the nightly job."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer

from blocks.cli_common import (
    EXIT_ERROR, EXIT_HALT, EXIT_OK, EXIT_RETRY, BucketOpt, ConfigOpt, Output, OutputOpt, cli_errors, fmt_bytes, is_tty,
    load_store_config, parse_duration_ms, parse_time_ms, render,
)
from blocks.errors import HaltError, InvalidInputError, RetryableError, StrataError
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
    """The pass's summary as Prometheus text exposition (for the node-exporter textfile collector)."""
    lines = ["# HELP strata_compact_last_run_timestamp_seconds When the last pass finished.",
             "# TYPE strata_compact_last_run_timestamp_seconds gauge",
             f"strata_compact_last_run_timestamp_seconds {now_ms / 1000:.3f}",
             "# HELP strata_compact_last_exit_code Exit code of the last pass (0 ok, 1 error, 3 halt, 75 retry).",
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
              "# HELP strata_compact_no_compact_blocks Blocks carrying a no-compact mark (need an operator).",
              "# TYPE strata_compact_no_compact_blocks gauge", f"strata_compact_no_compact_blocks {s.no_compact_blocks}",
              "# HELP strata_compact_errors Unexpected errors in the last pass (the other tenants went on).",
              "# TYPE strata_compact_errors gauge", f"strata_compact_errors {len(s.errors)}",
              "# HELP strata_compact_retries Work left for a retry by transient errors in the last pass.",
              "# TYPE strata_compact_retries gauge", f"strata_compact_retries {len(s.retry)}",
              "# HELP strata_compact_leased_jobs Jobs skipped because another live run held their lease.",
              "# TYPE strata_compact_leased_jobs gauge", f"strata_compact_leased_jobs {len(s.leased)}",
              "# HELP strata_retention_policy_problems Bad entries in the stored retention policy (each holds what it names).",
              "# TYPE strata_retention_policy_problems gauge", f"strata_retention_policy_problems {len(s.policy_problems)}",
              "# HELP strata_compact_push_failed 1 if the last pass could not push to the Pushgateway.",
              "# TYPE strata_compact_push_failed gauge", f"strata_compact_push_failed {int(push_failed)}",
              "# HELP strata_compact_blocks_deleted Blocks removed in the last pass.",
              "# TYPE strata_compact_blocks_deleted gauge", f"strata_compact_blocks_deleted {len(s.deleted)}",
              "# HELP strata_compact_duration_seconds Duration of the last pass by phase.",
              "# TYPE strata_compact_duration_seconds gauge"]
    lines += [f'strata_compact_duration_seconds{{phase="{p}"}} {v}' for p, v in sorted(s.seconds.items())]
    lines += ["# HELP strata_bucket_newest_block_end_seconds End of the newest live block per resolution (downsampling lag = now - this).",
              "# TYPE strata_bucket_newest_block_end_seconds gauge"]
    lines += [f'strata_bucket_newest_block_end_seconds{{resolution="{r}"}} {v / 1000:.3f}'
              for r, v in sorted(s.newest_ms.items())]
    lines += ["# HELP strata_bucket_blocks Blocks not marked for deletion after the last pass, by resolution.",
              "# TYPE strata_bucket_blocks gauge"]
    lines += [f'strata_bucket_blocks{{resolution="{r}"}} {v}' for r, v in sorted(s.live_blocks.items())]
    lines += ["# HELP strata_bucket_bytes Bytes of the blocks not marked for deletion, by resolution.",
              "# TYPE strata_bucket_bytes gauge"]
    lines += [f'strata_bucket_bytes{{resolution="{r}"}} {v}' for r, v in sorted(s.live_bytes.items())]
    retained = s.retention.get("tenants", {}).values()
    lines += ["# HELP strata_retention_blocks_waiting Blocks past retention waiting for a coarser tier (safety rule).",
              "# TYPE strata_retention_blocks_waiting gauge",
              f"strata_retention_blocks_waiting {sum(len(r['waiting']) for r in retained)}"]
    lines += ["# HELP strata_objstore_requests Object-store requests of the last pass by kind.",
              "# TYPE strata_objstore_requests gauge"]
    lines += [f'strata_objstore_requests{{kind="{k}"}} {v}'
              for k, v in sorted(s.requests.get("requests", {}).items())]
    return "\n".join(lines) + "\n"


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
        sys.stderr.write(json.dumps({"event": "pushgateway_error", "url": target, "error": str(e)}) + "\n")
        return False
    return True


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
    lines += [f"POLICY {p}" for p in d["policy_problems"]]
    lines += [f"ERROR {e.get('tenant', '-')} {e['phase']}: {e['error']}" for e in d["errors"]]
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
                require_push: Annotated[bool, typer.Option("--require-push", help="Exit 1 if an otherwise successful pass could not push to the Pushgateway.")] = False,
                now: Annotated[Optional[str], typer.Option(help="Pretend it is this time (ms or ISO-8601); for tests and backfills.")] = None,
                output: OutputOpt = Output.text) -> None:
    """One pass of the nightly job: compact raw blocks into days, downsample raw->5m->1h->1d,
    remove blocks whose deletion delay has passed, clean unfinished uploads.

    Nothing one tenant or block does stops the rest of the pass. Exit 0 on success; 3 if a block
    was marked no-compact (integrity) or the retention policy has bad entries (each holds only what
    it names); 75 if a transient error or another run's live lease left work undone (retry); 1 on an
    unexpected error. The summary and --metrics-textfile are written on every path, crashes and
    SIGTERM included.
    """
    i, n = parse_shard(shard)
    summary = Summary()
    failure: BaseException | None = None
    previous = _on_sigterm(_terminated)
    emit, stop = _emitter()
    try:
        store = open_store(load_store_config(bucket, config))
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
        run_once(store, now_ms, cfg, emit=emit, summary=summary)
    except (RetryableError, Terminated) as e:
        summary.retry.append(f"pass: {e}")
        failure = e
    except BaseException as e:  # noqa: BLE001 - the metrics below must be written on every path
        summary.errors.append({"phase": "pass", "error": f"{type(e).__name__}: {e}"})
        failure = e
    finally:
        stop()
        _on_sigterm(previous)
    code = exit_code(summary)
    push_failed = False
    if pushgateway is not None:
        push_failed = not push_metrics(pushgateway, metrics_text(summary, int(time.time() * 1000), code),
                                       f"{i}" if n > 1 else "")
    # Written on every exit path, crashes included, so StrataCompactFailed can fire.
    if metrics_textfile is not None:
        tmp = metrics_textfile.with_suffix(metrics_textfile.suffix + ".tmp")
        tmp.write_text(metrics_text(summary, int(time.time() * 1000), code, push_failed))
        tmp.replace(metrics_textfile)
    render(output, summary.as_dict(), _text)  # the summary, on every path too
    if isinstance(failure, (KeyboardInterrupt, SystemExit)):
        raise failure
    if failure is not None:
        kind = "halt" if isinstance(failure, HaltError) else "retry" if code == EXIT_RETRY else "error"
        typer.echo(f"{kind}: {failure}", err=True)
        if not isinstance(failure, (StrataError, OSError, Terminated)):  # a bug: keep its traceback
            typer.echo("".join(traceback.format_exception(failure)).rstrip(), err=True)
    if code == 0 and push_failed and require_push:
        typer.echo("error: could not push metrics to the Pushgateway (--require-push)", err=True)
        code = EXIT_ERROR
    if code:
        raise typer.Exit(code)
