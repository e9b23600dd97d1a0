"""`strata compact`: the nightly job."""

from __future__ import annotations

import json
import time
from typing import Annotated, Optional

import typer

from blocks.cli_common import (
    EXIT_HALT, EXIT_RETRY, BucketOpt, ConfigOpt, Output, OutputOpt, cli_errors, fmt_bytes,
    load_store_config, parse_duration_ms, parse_time_ms, render,
)
from blocks.objstore import open_store
from compactor.nightly import CompactorConfig, run_once


def _text(d: dict) -> str:
    lines = []
    for c in d["compacted"]:
        lines.append(f"compacted {len(c['sources'])} raw blocks -> {c['tenant']}/{c['ulid']} "
                     f"({c['samples']:,} samples, {fmt_bytes(c['bytes'])}, "
                     f"{c['identical_dropped']:,} duplicate samples dropped)")
    for x in d["downsampled"]:
        lines.append(f"downsampled {x['source']} -> {x['resolution']} {x['tenant']}/{x['ulid']} "
                     f"({x['rows']:,} windows of {x['samples']:,} samples, {fmt_bytes(x['bytes'])})")
    lines += [f"deleted {b}" for b in d["deleted"]]
    lines += [f"removed unfinished upload {b}" for b in d["cleaned_unfinished"]]
    lines += [f"HALT {h['job']}: {h['reason']} (marked no-compact)" for h in d["halted"]]
    lines += [f"RETRY {r}" for r in d["retry"]]
    req = d["requests"].get("requests", {})
    lines.append(f"summary: {len(d['compacted'])} compactions, {len(d['downsampled'])} downsampled blocks, "
                 f"{len(d['deleted'])} deleted; object-store requests {json.dumps(req, sort_keys=True)}; "
                 f"{d['seconds']}")
    return "\n".join(lines)


@cli_errors
def compact_cmd(bucket: BucketOpt = None, config: ConfigOpt = None,
                once: Annotated[bool, typer.Option("--once", help="Run one pass and exit (the CronJob mode).")] = True,
                deletion_delay: Annotated[str, typer.Option(help="Marked blocks are removed after this delay.")] = "48h",
                grace: Annotated[str, typer.Option(help="A range is closed this long after its end.")] = "1h",
                now: Annotated[Optional[str], typer.Option(help="Pretend it is this time (ms or ISO-8601); for tests and backfills.")] = None,
                output: OutputOpt = Output.text) -> None:
    """One pass of the nightly job: compact raw blocks into days, downsample raw->5m->1h->1d,
    remove blocks whose deletion delay has passed, clean unfinished uploads.

    Exit 0 on success, 3 if any group was marked no-compact (integrity), 75 if a transient error
    left work undone (retry).
    """
    store = open_store(load_store_config(bucket, config))
    cfg = CompactorConfig(grace_ms=parse_duration_ms(grace), deletion_delay_ms=parse_duration_ms(deletion_delay))
    summary = run_once(store, parse_time_ms(now) if now else int(time.time() * 1000), cfg)
    render(output, summary.as_dict(), _text)
    if summary.halted:
        raise typer.Exit(EXIT_HALT)
    if summary.retry:
        raise typer.Exit(EXIT_RETRY)
