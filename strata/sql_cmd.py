"""`strata sql`: DuckDB over a bucket's live blocks, read-only (see query_gateway.sql)."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import json
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import pyarrow as pa
import pyarrow.parquet as pq
import typer

from strata.common import BucketOpt, ConfigOpt, cli_errors, load_store_config, parse_duration_ms
from blocks.errors import InvalidInputError
from blocks.layout import validate_tenant
from blocks.objstore import open_store
from blocks.reader import list_tenants
from blocks.marks import DELETION_DELAY
from query_gateway.sql import SqlError, SqlLimit, SqlResult, SqlSession, tenant_blocks


class SqlOut(str, Enum):
    """Result formats."""

    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


def _cell(v) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, dt.datetime):
        return v.isoformat(sep=" ", timespec="milliseconds")
    if isinstance(v, (list, dict)):
        return json.dumps(v, default=str)
    return str(v)


def _map_text(v) -> str:
    return "{" + ", ".join(f'{k}="{x}"' for k, x in v) + "}"


def format_table(table: pa.Table) -> str:
    """Aligned text: a header, a rule, one line per row (maps as {k="v", ...})."""
    names = table.column_names
    maps = {i for i, f in enumerate(table.schema) if pa.types.is_map(f.type)}
    rows = [[_map_text(v) if i in maps and v is not None else _cell(v) for i, v in enumerate(r.values())]
            for r in table.to_pylist()]
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]
    out = ["  ".join(n.ljust(w) for n, w in zip(names, widths)).rstrip(),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) if _numeric(table, i) else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in rows]
    return "\n".join(out)


def _numeric(table: pa.Table, i: int) -> bool:
    t = table.schema.field(i).type
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _json_default(v):
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    return str(v)


def write_result(result: SqlResult, fmt: SqlOut, out: Optional[Path]) -> None:
    """Print or write one result."""
    t = result.table
    if fmt == SqlOut.parquet:
        if out is None:
            raise InvalidInputError("-o parquet needs --out FILE")
        pq.write_table(t, out, compression="zstd")
        return
    if fmt == SqlOut.table:
        text = format_table(t)
    elif fmt == SqlOut.json:
        text = "\n".join(json.dumps(r, default=_json_default) for r in t.to_pylist())
    else:
        import io
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(t.column_names)
        for r in t.to_pylist():
            w.writerow(["" if v is None else _cell(v) for v in r.values()])
        text = buf.getvalue().rstrip("\n")
    if out is not None:
        out.write_text(text + "\n")
    else:
        typer.echo(text)


def _footer(r: SqlResult) -> str:
    req = sum(r.requests.values())
    more = " (truncated at --max-rows)" if r.truncated else ""
    return (f"{r.table.num_rows:,} rows{more} in {r.seconds:.3f}s; read samples of {r.blocks_read} of "
            f"{r.blocks_live} live blocks (series tables of {r.series_tables_read}), {req} object-store requests")


@cli_errors
def sql_cmd(query: Annotated[Optional[str], typer.Argument(help="One SELECT; none: an interactive prompt (or the query from stdin).")] = None,
            tenant: Annotated[Optional[str], typer.Option(help="Tenant whose blocks the views show.")] = None,
            all_tenants: Annotated[bool, typer.Option("--all-tenants", help="Every tenant, with a `tenant` column.")] = False,
            bucket: BucketOpt = None, config: ConfigOpt = None,
            output: Annotated[SqlOut, typer.Option("--output", "-o", help="table, csv, json (lines) or parquet (needs --out).")] = SqlOut.table,
            out: Annotated[Optional[Path], typer.Option(help="Write the result here instead of stdout.")] = None,
            explain: Annotated[bool, typer.Option("--explain", help="Print DuckDB's plan instead of running the query.")] = False,
            max_rows: Annotated[int, typer.Option(help="Stop after this many rows.")] = 100_000,
            timeout: Annotated[str, typer.Option(help="Cancel a query running longer than this.")] = "10m",
            deletion_delay: Annotated[str, typer.Option(help="The compactor's deletion delay (live-block rule).")] = DELETION_DELAY,
            quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No footer (rows, time, blocks, requests) on stderr.")] = False) -> None:
    """SQL over the bucket: views series, samples, samples_5m/1h/1d and blocks (read-only DuckDB).

    Only live blocks are read (nothing marked past half the deletion delay, no superseded copy),
    so no sample counts twice. Predicates on ts_ms skip whole blocks and row groups.
    """
    if bool(tenant) == all_tenants:
        raise InvalidInputError("pass --tenant NAME or --all-tenants")
    store = open_store(load_store_config(bucket, config), create=False)
    now = int(time.time() * 1000)
    delay = parse_duration_ms(deletion_delay)
    names = list_tenants(store) if all_tenants else [validate_tenant(tenant)]
    if tenant and tenant not in list_tenants(store):
        raise InvalidInputError(f"tenant {tenant!r} has no blocks in this bucket")
    session = SqlSession(store, [tenant_blocks(store, t, deletion_delay_ms=delay, now_ms=now) for t in names],
                         tenant_column=all_tenants)
    timeout_s = parse_duration_ms(timeout) / 1000

    def one(sql: str) -> None:
        sql = sql.strip().rstrip(";")
        if explain and not sql.lower().startswith("explain"):
            sql = "EXPLAIN " + sql
        r = session.run(sql, max_rows=max_rows, timeout_s=timeout_s)
        if explain:
            typer.echo("\n".join(str(v) for v in r.table.column(r.table.num_columns - 1).to_pylist()))
        else:
            write_result(r, output, out)
        if not quiet:
            typer.echo(_footer(r), err=True)

    if query is not None:
        one(query)
        return
    if not sys.stdin.isatty():
        one(sys.stdin.read())
        return
    _repl(one)


def _repl(one) -> None:
    try:
        import readline  # noqa: F401  (line editing and history in input())
    except ImportError:
        pass
    typer.echo("strata sql: end a query with ';'. Views: series, samples, samples_5m, samples_1h, "
               "samples_1d, blocks. Ctrl-D quits.", err=True)
    buf: list[str] = []
    while True:
        try:
            line = input("strata> " if not buf else "     -> ")
        except EOFError:
            typer.echo("", err=True)
            return
        except KeyboardInterrupt:
            buf = []
            typer.echo("", err=True)
            continue
        buf.append(line)
        if line.rstrip().endswith(";"):
            sql, buf = "\n".join(buf), []
            try:
                one(sql)
            except (SqlError, SqlLimit, InvalidInputError) as e:
                typer.echo(f"error: {e}", err=True)
