"""`strata import` and `strata generate`."""

from __future__ import annotations

import contextlib
import signal
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from strata.common import (
    BucketOpt, ConfigOpt, Output, OutputOpt, cli_errors, fmt_bytes, fmt_time, load_store_config,
    is_tty, parse_time_ms, render,
)
from blocks.log import log
from blocks.errors import InvalidInputError
from blocks.layout import validate_tenant
from blocks.objstore import make_s3_client, open_store
from blocks.units import parse_block_range_ms, parse_memory_budget
from blocks.writer import WriterOptions
from ingest.generate import GenSpec, generate_prepared, write_openmetrics, write_parquet_long
from ingest.importer import write_prepared
from ingest.stream_import import ImportOptions, Interrupted, run_import
from ingest.streamparse import TimeWindow


class InFormat(str, Enum):
    """Input file formats."""

    auto = "auto"
    openmetrics = "openmetrics"
    prometheus = "prometheus"
    parquet = "parquet"


def _import_text(d: dict) -> str:
    if d["already_imported"]:
        return (f"already imported: this input (import {d['import_id']}) was imported completely "
                "before; nothing written (--force imports it again as new blocks)")
    if d["empty"]:
        return f"no samples in {d['files']} file(s); nothing imported"
    lines = [f"imported {d['files']} files ({fmt_bytes(d['bytes_read'])}): {d['samples_read']:,} samples read, "
             f"{d['samples_written']:,} written, {d['series']:,} series, {len(d['blocks'])} blocks "
             f"in {d['seconds']}s ({d['samples_per_s']:,} samples/s, peak RSS {fmt_bytes(d['peak_rss_bytes'])})"]
    if d["blocks_skipped"]:
        lines.append(f"resumed import {d['import_id']}: {d['blocks_skipped']} blocks were already committed "
                     "by an earlier, interrupted run")
    if d["duplicates_dropped"] or d["conflicts_last_wins"]:
        lines.append(f"duplicates dropped: {d['duplicates_dropped']:,} identical, "
                     f"{d['conflicts_last_wins']:,} same timestamp with another value (last wins)")
    if d["timestamps_rounded"]:
        lines.append(f"timestamps rounded to ms: {d['timestamps_rounded']:,}")
    for b in d["blocks"]:
        lines.append(f"  {b['ulid']}  {fmt_time(b['min_time'])} .. {fmt_time(b['max_time'])}  "
                     f"{b['series']:,} series  {b['samples']:,} samples  {fmt_bytes(b['bytes'])}")
    return "\n".join(lines)


class _Progress:
    """A rich bar on a terminal; JSON progress events on stderr (every `every_s`) otherwise."""

    def __init__(self, tty: bool, every_s: float):
        self.tty, self.every_s = tty, every_s
        self.t0 = self.last = time.monotonic()
        self.bar = None
        if tty:
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                       TimeRemainingColumn, TransferSpeedColumn)
            self.bar = Progress(TextColumn("[bold]{task.fields[phase]}"), BarColumn(), DownloadColumn(),
                                TransferSpeedColumn(), TextColumn("{task.fields[samples]:,} samples"),
                                TextColumn("{task.fields[rate]:,.0f}/s"), TimeRemainingColumn(),
                                transient=True, console=_stderr_console())
            self.task = None

    def __call__(self, ev: dict) -> None:
        now = time.monotonic()
        elapsed = max(now - self.t0, 1e-9)
        rate = ev["samples"] / elapsed
        if self.bar is not None:
            if self.task is None:
                self.bar.start()
                self.task = self.bar.add_task("import", total=ev["total_bytes"], phase="read",
                                              samples=0, rate=0.0)
            phase = "read" if ev["phase"] == "read" else f"write {ev['blocks_done']}/{ev['blocks_total']} blocks"
            self.bar.update(self.task, completed=ev["bytes_read"], phase=phase, samples=ev["samples"], rate=rate)
            return
        if now - self.last < self.every_s:
            return
        self.last = now
        out = {**ev, "elapsed_s": round(elapsed, 3), "samples_per_s": round(rate)}
        if ev["phase"] == "read" and ev["bytes_read"]:
            out["eta_s"] = round(elapsed * (ev["total_bytes"] - ev["bytes_read"]) / ev["bytes_read"], 1)
        log("import", "import_progress", tty=False, **out)

    def close(self) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.stop()


def _stderr_console():
    from rich.console import Console
    return Console(stderr=True)


@contextlib.contextmanager
def _interruptible():
    """SIGINT/SIGTERM raise Interrupted in the main thread (once; a second signal is ignored)."""
    def handler(signum, _frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@cli_errors
def import_cmd(files: Annotated[list[str], typer.Argument(help="OpenMetrics/Prometheus text or long-format Parquet: local files or s3://bucket/prefix/*.om.gz globs; .gz/.zst are decompressed as a stream.")],
               tenant: Annotated[str, typer.Option(help="Tenant to import into.")],
               bucket: BucketOpt = None, config: ConfigOpt = None,
               format: Annotated[InFormat, typer.Option("--format", help="Input format (auto: by extension; text ending in '# EOF' is OpenMetrics).")] = InFormat.auto,
               block_range: Annotated[str, typer.Option(help="Raw block range, aligned to the epoch.")] = "2h",
               memory_budget: Annotated[str, typer.Option(help="Working memory for parsing and sorting (peak RSS is about this plus ~240MiB of code); samples spill to --scratch-dir.")] = "512MiB",
               scratch_dir: Annotated[Optional[Path], typer.Option(help="Scratch directory (~20 bytes per sample); default $TMPDIR.")] = None,
               allow_any_time: Annotated[bool, typer.Option("--allow-any-time", help="Accept timestamps before 2000-01-01 or more than a day ahead.")] = False,
               allow_empty: Annotated[bool, typer.Option("--allow-empty", help="Input without samples is a no-op with a message, not an error.")] = False,
               force: Annotated[bool, typer.Option("--force", help="Import again an input that was already imported completely.")] = False,
               progress_every: Annotated[float, typer.Option(help="Seconds between JSON progress events off a terminal.")] = 2.0,
               output: OutputOpt = Output.text) -> None:
    """Import files into raw blocks, streaming with bounded memory.

    A malformed line anywhere fails with file:line and writes nothing. A rerun after a crash
    finishes the same blocks; a rerun of a finished import writes nothing. SIGINT/SIGTERM stop it
    and remove what it uploaded.
    """
    cfg = load_store_config(bucket, config)
    store = open_store(cfg)
    now = int(time.time() * 1000)
    opts = ImportOptions(fmt=format.value, block_range_ms=parse_block_range_ms(block_range),
                         memory_budget=parse_memory_budget(memory_budget),
                         window=None if allow_any_time else TimeWindow.default(now),
                         allow_empty=allow_empty, force=force,
                         writer=WriterOptions(scratch_dir=str(scratch_dir) if scratch_dir else None))
    progress = _Progress(is_tty(), progress_every)
    t0 = time.monotonic()
    try:
        with _interruptible():
            report = run_import(store, validate_tenant(tenant), files, now_ms=now, opts=opts,
                                progress=progress, s3_client_factory=lambda: make_s3_client(cfg))
    except Interrupted as e:
        progress.close()
        name = signal.Signals(e.signum).name
        typer.echo(f"interrupted by {name} after {time.monotonic() - t0:.1f}s: import stopped; "
                   f"removed {e.removed} block(s) it had uploaded and its manifest, nothing of it "
                   "remains in the bucket", err=True)
        raise typer.Exit(128 + e.signum) from None
    progress.close()
    render(output, report.as_dict(), _import_text)


class OutFormat(str, Enum):
    """Generator outputs."""

    openmetrics = "openmetrics"
    parquet = "parquet"


@cli_errors
def generate_cmd(series: Annotated[int, typer.Option(help="About this many series (rounded to whole hosts of 49).")] = 1000,
                 hours: Annotated[float, typer.Option(help="Hours of data.")] = 48.0,
                 step: Annotated[int, typer.Option(help="Scrape interval in seconds.")] = 15,
                 seed: Annotated[int, typer.Option(help="RNG seed; same seed, same data.")] = 1,
                 start: Annotated[Optional[str], typer.Option(help="Start time (ms or ISO-8601); default: now - hours, aligned to 2h.")] = None,
                 jitter_ms: Annotated[int, typer.Option(help="Per-scrape timestamp jitter (± ms).")] = 0,
                 out: Annotated[Optional[Path], typer.Option(help="Write a file instead of a bucket.")] = None,
                 format: Annotated[OutFormat, typer.Option("--format", help="File format with --out.")] = OutFormat.openmetrics,
                 bucket: BucketOpt = None, config: ConfigOpt = None,
                 tenant: Annotated[Optional[str], typer.Option(help="Tenant when writing to a bucket.")] = None,
                 output: OutputOpt = Output.text) -> None:
    """Generate deterministic node-exporter-like data to a file or straight into a bucket."""
    if start is None:
        now = int(time.time() * 1000)
        start_ms = (now - int(hours * 3_600_000)) // 7_200_000 * 7_200_000
    else:
        start_ms = parse_time_ms(start)
    spec = GenSpec(series=series, hours=hours, step_s=step, seed=seed, start_ms=start_ms, jitter_ms=jitter_ms)
    t0 = time.time()
    if out is not None:
        n = (write_openmetrics if format == OutFormat.openmetrics else write_parquet_long)(spec, out)
        data = {"file": str(out), "format": format.value, "samples": n,
                "series": spec.hosts * 49, "start_ms": start_ms, "seconds": round(time.time() - t0, 3)}
    else:
        if not tenant:
            raise InvalidInputError("writing to a bucket needs --tenant (or pass --out FILE)")
        store = open_store(load_store_config(bucket, config))
        prep = generate_prepared(spec)
        metas = write_prepared(store, validate_tenant(tenant), prep, now_ms=int(time.time() * 1000))
        data = {"bucket": bucket, "tenant": tenant, "samples": int(len(prep.ts)), "series": len(prep.series),
                "blocks": len(metas), "start_ms": start_ms, "seconds": round(time.time() - t0, 3)}
    render(output, data, lambda d: f"generated {d['samples']:,} samples of {d['series']:,} series from "
           f"{fmt_time(d['start_ms'])} into {d.get('file') or d.get('bucket')} in {d['seconds']}s")
