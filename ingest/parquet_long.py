"""Parquet long format import: columns metric, labels ({k="v"} text or a map), ts (ms), value."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from blocks.errors import InvalidInputError
from blocks.labels import format_series, parse_series
from ingest.textformat import ParsedText

REQUIRED = ("metric", "labels", "ts", "value")


def _labels_text(col: pa.ChunkedArray) -> list[str]:
    """Labels column as `{k="v",...}` text, from text or a map."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col.to_pylist()
    if pa.types.is_map(col.type):
        out = []
        for row in col.to_pylist():
            if row is None:
                out.append(None)
                continue
            pairs = [("__name__", "x")] + [(k, v) for k, v in row]
            out.append(format_series(tuple(sorted(pairs)))[1:])  # drop the dummy name
        return out
    raise InvalidInputError(f"labels column must be text or map<string,string>, not {col.type}")


def parse_parquet_file(path: Path) -> ParsedText:
    """Parse one Parquet long-format file; errors name the file and row."""
    name = str(path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise InvalidInputError(f"{name}: not a readable Parquet file: {e}") from None
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise InvalidInputError(f"{name}: missing columns {missing} (need {list(REQUIRED)})")
    if not pa.types.is_integer(table.schema.field("ts").type):
        raise InvalidInputError(f"{name}: column ts must be integer milliseconds, not {table.schema.field('ts').type}")
    if not (pa.types.is_floating(table.schema.field("value").type) or pa.types.is_integer(table.schema.field("value").type)):
        raise InvalidInputError(f"{name}: column value must be numeric, not {table.schema.field('value').type}")
    labels = _labels_text(table.column("labels"))
    df = pl.DataFrame({
        "metric": pl.Series(table.column("metric").to_pylist(), dtype=pl.String),
        "labels": pl.Series(labels, dtype=pl.String),
        "ts": pl.from_arrow(table.column("ts")).cast(pl.Int64),
        "value": pl.from_arrow(table.column("value")).cast(pl.Float64),
    }).with_row_index("line", offset=1)
    for c in REQUIRED:
        nulls = df.filter(pl.col(c).is_null())
        if len(nulls):
            raise InvalidInputError(f"{name}: row {nulls['line'][0]}: null {c}")
    df = df.with_columns(series=pl.col("metric") + pl.col("labels").str.strip_chars())
    uniq = df.select("series", "line").group_by("series", maintain_order=True).first()
    series_text = uniq["series"].to_list()
    for text, line in zip(series_text, uniq["line"].to_list()):
        try:
            parse_series(text)
        except InvalidInputError as e:
            raise InvalidInputError(f"{name}: row {line}: {e}") from None
    sid_map = pl.DataFrame({"series": series_text,
                            "sid": pl.int_range(0, len(series_text), eager=True, dtype=pl.UInt32)})
    frame = df.join(sid_map, on="series", how="left", maintain_order="left").select(
        "sid", "ts", "value", pl.col("line").cast(pl.UInt32))
    return ParsedText(series_text, frame, {})
