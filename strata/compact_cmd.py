"""`strata compact`: the nightly job."""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer

from strata.common import (
    EXIT_ERROR, EXIT_RETRY, BucketOpt, ConfigOpt, Output, OutputOpt, cli_errors, fmt_bytes, is_tty,
    load_store_config, parse_duration_ms, parse_time_ms, render,
)
from blocks.errors import HaltError, RetryableError, StrataError
from blocks.log import human, log, record
from blocks.objstore import open_store
from blocks.selectors import parse_selector
from blocks.units import parse_memory_budget
from blocks.writer import WriterOptions
from blocks.marks import DELETION_DELAY
from compactor.execute import ExecOptions
from compactor.nightly import CompactorConfig, Summary, run_once
from compactor.outcome import (
    BYTES_PER_PARTITION_ROW, Terminated, _on_sigterm, _terminated, exit_code, metrics_text, parse_shard, push_metrics,
)

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
            elif event in ("halt", "retry", "error"):
                console.print(human(record("compactor", event, "error" if event != "retry" else "warn", **fields)),
                              style="red", markup=False, highlight=False)

        return emit, status.stop

    def emit(event: str, **fields) -> None:
        level = {"halt": "error", "error": "error", "retry": "warn", "leased": "warn"}.get(event, "info")
        log("compactor", event, level, tty=False, **fields)

    return emit, lambda: None


@cli_errors
def compact_cmd(bucket: BucketOpt = None, config: ConfigOpt = None,
                once: Annotated[bool, typer.Option("--once", hidden=True, help="Accepted for old manifests: one pass is the only mode.")] = True,
                shard: Annotated[Optional[str], typer.Option(help="i/n: this pod's share of (tenant, group, day) work; default from JOB_COMPLETION_INDEX/JOB_COMPLETIONS.")] = None,
                dedup_replica_label: Annotated[Optional[str], typer.Option(help="Deduplicate HA replicas that differ only in this label.")] = None,
                downsample_exclude: Annotated[Optional[list[str]], typer.Option(help='Series selector kept out of downsampling, e.g. \'{__name__=~"go_.*"}\'; repeatable.')] = None,
                memory_budget: Annotated[str, typer.Option(help="Peak memory the merge may use (sets partition size).")] = "1GiB",
                scratch_dir: Annotated[Optional[Path], typer.Option(help="Scratch space for partitions and block files (an emptyDir).")] = None,
                deletion_delay: Annotated[str, typer.Option(help="Marked blocks are removed after this delay.")] = DELETION_DELAY,
                grace: Annotated[str, typer.Option(help="A range is closed this long after its end.")] = "1h",
                lease_ttl: Annotated[str, typer.Option(help="A job's lease expires this long after its holder's last renewal (it renews every third of it while the job runs).")] = "2m",
                metrics_textfile: Annotated[Optional[Path], typer.Option(help="Write the summary as Prometheus metrics to this file.")] = None,
                pushgateway: Annotated[Optional[str], typer.Option(envvar="STRATA_PUSHGATEWAY", help="Push the summary metrics to this Pushgateway URL (job strata_compact); empty: no push.")] = None,
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
    budget = parse_memory_budget(memory_budget)  # nonsense flags: one line, before the pass starts
    summary = Summary()
    failure: BaseException | None = None
    previous = _on_sigterm(_terminated)
    emit, stop = _emitter()
    try:
        store = open_store(load_store_config(bucket, config), create=False)
        selectors = [parse_selector(x) for x in downsample_exclude or []]
        scratch = str(scratch_dir) if scratch_dir else None
        execution = ExecOptions(
            writer=WriterOptions(scratch_dir=scratch),
            partition_rows=max(10_000, budget // BYTES_PER_PARTITION_ROW),
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
    if pushgateway:
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
