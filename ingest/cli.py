"""`strata import` and `strata generate`."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from blocks.cli_common import (
    BucketOpt, ConfigOpt, Output, OutputOpt, cli_errors, fmt_bytes, fmt_time, load_store_config,
    parse_duration_ms, parse_time_ms, render,
)
from blocks.errors import InvalidInputError
from blocks.layout import validate_tenant
from blocks.objstore import open_store
from ingest.generate import GenSpec, generate_prepared, write_openmetrics, write_parquet_long
from ingest.importer import import_files, write_prepared


class InFormat(str, Enum):
    """Input file formats."""

    auto = "auto"
    openmetrics = "openmetrics"
    prometheus = "prometheus"
    parquet = "parquet"


def _import_text(d: dict) -> str:
    lines = [f"imported {d['files']} files: {d['samples_read']:,} samples read, "
             f"{d['samples_written']:,} written, {d['series']:,} series, {len(d['blocks'])} blocks"]
    if d["duplicates_dropped"] or d["conflicts_last_wins"]:
        lines.append(f"duplicates dropped: {d['duplicates_dropped']:,} identical, "
                     f"{d['conflicts_last_wins']:,} same timestamp with another value (last wins)")
    if d["timestamps_rounded"]:
        lines.append(f"timestamps rounded to ms: {d['timestamps_rounded']:,}")
    for b in d["blocks"]:
        lines.append(f"  {b['ulid']}  {fmt_time(b['min_time'])} .. {fmt_time(b['max_time'])}  "
                     f"{b['series']:,} series  {b['samples']:,} samples  {fmt_bytes(b['bytes'])}")
    return "\n".join(lines)


@cli_errors
def import_cmd(files: Annotated[list[Path], typer.Argument(help="OpenMetrics/Prometheus text or Parquet files.")],
               tenant: Annotated[str, typer.Option(help="Tenant to import into.")],
               bucket: BucketOpt = None, config: ConfigOpt = None,
               format: Annotated[InFormat, typer.Option("--format", help="Input format (auto: .parquet by extension; text ending in '# EOF' is OpenMetrics).")] = InFormat.auto,
               block_range: Annotated[str, typer.Option(help="Raw block range, aligned to the epoch.")] = "2h",
               output: OutputOpt = Output.text) -> None:
    """Import files into raw blocks; a malformed file fails with file:line and writes nothing."""
    store = open_store(load_store_config(bucket, config))
    report = import_files(store, validate_tenant(tenant), files, now_ms=int(time.time() * 1000),
                          fmt=format.value, block_range_ms=parse_duration_ms(block_range))
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
