"""`strata blocks`: list, inspect and verify blocks in a bucket."""

from __future__ import annotations

from typing import Annotated, Optional

import pyarrow.parquet as pq
import typer

from strata.common import (
    BucketOpt, ConfigOpt, Output, OutputOpt, cli_errors, fmt_bytes, fmt_time, load_store_config,
    render, table,
)
from blocks.errors import InvalidInputError
from blocks.layout import SAMPLES_FILE, block_file_key, validate_block_id, validate_tenant
from blocks.meta import Resolution
from blocks.objstore import open_store
from blocks.reader import list_tenants, load_listing, load_meta, open_object, read_series
from blocks.verify import verify_bucket

app = typer.Typer(context_settings={"help_option_names": ["-h", "--help"]}, help="List, inspect and verify the blocks in a bucket.", no_args_is_help=True)


@app.command("ls")
@cli_errors
def ls_cmd(bucket: BucketOpt = None, config: ConfigOpt = None,
           tenant: Annotated[Optional[str], typer.Option(help="Only this tenant.")] = None,
           resolution: Annotated[Optional[str], typer.Option(help="Only this resolution: raw, 5m, 1h, 1d.")] = None,
           output: OutputOpt = Output.text) -> None:
    """List committed blocks per tenant and resolution with time range, series, samples, bytes."""
    res = Resolution.parse(resolution) if resolution else None  # flags first, then the bucket
    store = open_store(load_store_config(bucket, config), create=False)
    rows = []
    for t in [validate_tenant(tenant)] if tenant else list_tenants(store):
        listing = load_listing(store, t)
        for m in listing.metas:
            if res is not None and m.resolution != res:
                continue
            rows.append({"tenant": t, "ulid": m.ulid, "resolution": m.resolution.label, "level": m.level,
                         "min_time": m.min_time, "max_time": m.max_time, "series": m.stats.series,
                         "rows": m.stats.rows, "samples": m.stats.samples, "bytes": m.stats.bytes,
                         "deletion_marked": m.ulid in listing.deletion_marks,
                         "no_compact": m.ulid in listing.no_compact_marks})

    def text(rs: list[dict]) -> str:
        body = [[r["tenant"], r["ulid"], r["resolution"], str(r["level"]), fmt_time(r["min_time"]),
                 fmt_time(r["max_time"]), f"{r['series']:,}", f"{r['samples']:,}", fmt_bytes(r["bytes"]),
                 ("D" if r["deletion_marked"] else "") + ("N" if r["no_compact"] else "")] for r in rs]
        total = sum(r["bytes"] for r in rs)
        summary = {}
        for r in rs:
            summary.setdefault(r["resolution"], [0, 0])
            summary[r["resolution"]][0] += 1
            summary[r["resolution"]][1] += r["bytes"]
        tail = ", ".join(f"{k}: {v[0]} blocks {fmt_bytes(v[1])}" for k, v in summary.items())
        return table(body, ["TENANT", "ULID", "RES", "LVL", "FROM", "TO", "SERIES", "SAMPLES", "BYTES", "MARKS"]) + \
            f"\n{len(rs)} blocks, {fmt_bytes(total)}" + (f" ({tail})" if tail else "")

    render(output, rows, text)


@app.command("inspect")
@cli_errors
def inspect_cmd(block_id: Annotated[str, typer.Argument(help="Block ULID.")],
                tenant: Annotated[str, typer.Option(help="Tenant of the block.")],
                bucket: BucketOpt = None, config: ConfigOpt = None, output: OutputOpt = Output.text) -> None:
    """Show one block: meta, samples schema and row groups, and per-metric series counts."""
    validate_tenant(tenant), validate_block_id(block_id)  # flags first, then the bucket
    store = open_store(load_store_config(bucket, config), create=False)
    meta = load_meta(store, tenant, block_id)
    series = read_series(store, meta)
    per_metric: dict[str, int] = {}
    for name in series.column("metric_name").to_pylist():
        per_metric[name] = per_metric.get(name, 0) + 1
    entry = meta.file(SAMPLES_FILE)
    with open_object(store, block_file_key(tenant, block_id, SAMPLES_FILE), entry.size_bytes) as f:
        md = pq.ParquetFile(f).metadata
        schema = md.schema.to_arrow_schema()
        groups = []
        col_bytes: dict[str, int] = {}
        for i in range(md.num_row_groups):
            rg = md.row_group(i)
            refs = rg.column(0).statistics
            groups.append({"rows": rg.num_rows, "bytes": rg.total_byte_size,
                           "series_ref_min": refs.min if refs and refs.has_min_max else None,
                           "series_ref_max": refs.max if refs and refs.has_min_max else None})
            for j in range(rg.num_columns):
                c = rg.column(j)
                col_bytes[c.path_in_schema] = col_bytes.get(c.path_in_schema, 0) + c.total_compressed_size
        encodings = {md.row_group(0).column(j).path_in_schema: list(md.row_group(0).column(j).encodings)
                     for j in range(md.num_columns)} if md.num_row_groups else {}
    data = {"meta": {"ulid": meta.ulid, "tenant": meta.tenant, "min_time": meta.min_time,
                     "max_time": meta.max_time, "resolution": meta.resolution.label, "level": meta.level,
                     "sources": list(meta.sources), "parents": list(meta.parents), "labels": meta.labels,
                     "stats": vars(meta.stats), "files": [vars(f) for f in meta.files],
                     "created_by": meta.created_by, "created_at_ms": meta.created_at_ms},
            "series_columns": series.column_names,
            "samples_schema": [f"{f.name}: {f.type}" for f in schema],
            "column_bytes": col_bytes, "column_encodings": encodings,
            "row_groups": groups, "series_per_metric": dict(sorted(per_metric.items()))}

    def text(d: dict) -> str:
        m = d["meta"]
        out = [f"block {m['ulid']}  tenant {m['tenant']}  resolution {m['resolution']}  level {m['level']}",
               f"range {fmt_time(m['min_time'])} .. {fmt_time(m['max_time'])}  [{m['min_time']}, {m['max_time']})",
               f"series {m['stats']['series']:,}  rows {m['stats']['rows']:,}  samples {m['stats']['samples']:,}  "
               f"bytes {fmt_bytes(m['stats']['bytes'])}  "
               f"({m['stats']['bytes'] / max(1, m['stats']['samples']):.3f} B/sample)",
               f"sources {len(m['sources'])}  parents {len(m['parents'])}  labels {m['labels']}",
               "files:"] + [f"  {f['name']:18s} {f['size_bytes']:>12,}  sha256 {f['sha256'][:16]}…" for f in m["files"]]
        out.append("samples columns: " + ", ".join(
            f"{s} [{fmt_bytes(d['column_bytes'].get(s.split(':')[0], 0))}]" for s in d["samples_schema"]))
        out.append("series columns: " + ", ".join(d["series_columns"]))
        out.append(f"row groups: {len(d['row_groups'])}")
        for i, g in enumerate(d["row_groups"]):
            out.append(f"  #{i}: {g['rows']:,} rows, refs {g['series_ref_min']}..{g['series_ref_max']}")
        out.append("series per metric:")
        out += [f"  {k}: {v}" for k, v in d["series_per_metric"].items()]
        return "\n".join(out)

    render(output, data, text)


@app.command("verify")
@cli_errors
def verify_cmd(bucket: BucketOpt = None, config: ConfigOpt = None,
               tenant: Annotated[Optional[str], typer.Option(help="Only this tenant.")] = None,
               shallow: Annotated[bool, typer.Option(help="Check sizes and checksums only, not contents.")] = False,
               output: OutputOpt = Output.text) -> None:
    """Verify checksums, schema, sort order and meta consistency; exit 3 on any problem."""
    store = open_store(load_store_config(bucket, config), create=False)
    report = verify_bucket(store, validate_tenant(tenant) if tenant else None, deep=not shallow)
    data = {"checked": report.checked, "ok": report.ok,
            "problems": [{"tenant": t, "block": b, "problems": p} for (t, b), p in sorted(report.problems.items())],
            "notes": [{"tenant": t, "block": b, "note": n} for (t, b), n in sorted(report.notes.items())]}

    def text(d: dict) -> str:
        lines = [f"{p['tenant']}/{p['block']}: {msg}" for p in d["problems"] for msg in p["problems"]]
        lines += [f"{n['tenant']}/{n['block']}: note: {n['note']}" for n in d["notes"]]
        lines.append(f"verified {d['checked']} blocks: " + ("ok" if d["ok"] else f"{len(d['problems'])} with problems"))
        return "\n".join(lines)

    render(output, data, text)
    if not report.ok:
        raise typer.Exit(3)


__all__ = ["app", "InvalidInputError"]
