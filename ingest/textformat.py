"""OpenMetrics and Prometheus text exposition parsing, vectorised with polars.

Lines are split by regex in polars; each distinct series text is parsed once in Python with a
real label parser. OpenMetrics timestamps are seconds with decimals and are converted to ms
exactly from their digits (never float x 1000); Prometheus text timestamps are integer ms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation, ROUND_HALF_EVEN
from pathlib import Path

import polars as pl

from blocks.errors import InvalidInputError
from blocks.labels import METRIC_NAME, METRIC_TYPES, parse_series

_SAMPLE_RE = r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{.*\})?)[ \t]+([^ \t]+)(?:[ \t]+([^ \t#]+))?[ \t]*$"
_OM_TYPES = {"counter": "counter", "gauge": "gauge", "histogram": "histogram", "summary": "summary",
             "unknown": "unknown", "untyped": "unknown", "gaugehistogram": "histogram",
             "info": "gauge", "stateset": "gauge"}


@dataclass
class ParsedText:
    """One file's samples: series texts (unique), and per-sample index/ts/value/line."""

    series_text: list[str]
    frame: pl.DataFrame  # columns: sid (u32 into series_text), ts (i64 ms), value (f64), line (u32)
    types: dict[str, str] = field(default_factory=dict)  # family name -> metric type
    ts_rounded: int = 0


def _fail(path: str, line: int, reason: str) -> InvalidInputError:
    return InvalidInputError(f"{path}:{line}: {reason}")


def detect_format(path: Path, lines: pl.Series) -> str:
    """By extension (.om/.openmetrics, .prom/.txt), else 'openmetrics' if any line is '# EOF'."""
    if path.suffix in (".om", ".openmetrics"):
        return "openmetrics"
    if path.suffix in (".prom", ".txt"):
        return "prometheus"
    return "openmetrics" if (lines == "# EOF").any() else "prometheus"


def _read_lines(path: Path) -> pl.Series:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise _fail(str(path), line, "invalid UTF-8") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return pl.Series("line", lines, dtype=pl.String)


def _parse_comments(path: str, comments: pl.DataFrame, fmt: str) -> dict[str, str]:
    types: dict[str, str] = {}
    for line_no, text in comments.iter_rows():
        parts = text.split(None, 3)
        if len(parts) >= 2 and parts[1] == "TYPE":
            if len(parts) != 4:
                raise _fail(path, line_no, "malformed TYPE line")
            family, kind = parts[2], parts[3].strip()
            if kind not in _OM_TYPES:
                raise _fail(path, line_no, f"unknown metric type {kind!r}")
            if family in types and types[family] != _OM_TYPES[kind]:
                raise _fail(path, line_no, f"conflicting TYPE for {family!r}")
            types[family] = _OM_TYPES[kind]
        elif fmt == "openmetrics" and len(parts) >= 2 and parts[1] not in ("HELP", "UNIT", "EOF"):
            raise _fail(path, line_no, f"unknown OpenMetrics descriptor {parts[1]!r}")
    return types


def _parse_values(path: str, df: pl.DataFrame) -> pl.Series:
    vals = df["value_text"].cast(pl.Float64, strict=False)
    bad = df.filter(vals.is_null())
    if len(bad):
        raise _fail(path, bad["line"][0], f"invalid value {bad['value_text'][0]!r}")
    return vals


def _parse_ts_ms(path: str, df: pl.DataFrame, fmt: str) -> tuple[pl.Series, int]:
    ts_text = df["ts_text"]
    missing = df.filter(ts_text.is_null())
    if len(missing):
        raise _fail(path, missing["line"][0], "sample has no timestamp (import needs timestamps)")
    if fmt == "prometheus":
        ts = ts_text.cast(pl.Int64, strict=False)
        bad = df.filter(ts.is_null())
        if len(bad):
            raise _fail(path, bad["line"][0], f"invalid timestamp {bad['ts_text'][0]!r} (want integer ms)")
        return ts, 0
    # OpenMetrics: seconds, optionally with decimals. Exact ms from the digits.
    parts = ts_text.str.extract_groups(r"^(-?\d+)(?:\.(\d+))?$")
    whole = parts.struct.field("1").cast(pl.Int64, strict=False)
    frac = parts.struct.field("2").fill_null("")
    simple = whole.is_not_null() & (frac.str.len_chars() <= 3)
    neg = ts_text.str.starts_with("-")
    frac_ms = frac.str.pad_end(3, "0").str.slice(0, 3).cast(pl.Int64, strict=False).fill_null(0)
    ms = pl.select(pl.when(neg).then(whole * 1000 - frac_ms).otherwise(whole * 1000 + frac_ms)).to_series()
    rounded = 0
    if not simple.all():
        # Rare forms (more than ms precision, exponents): exact decimal arithmetic, round half-even.
        out = ms.to_list()
        lines = df["line"]
        for i in (~simple).arg_true().to_list():
            text = ts_text[i]
            try:
                d = Decimal(text) * 1000
            except InvalidOperation:
                raise _fail(path, lines[i], f"invalid timestamp {text!r} (want seconds)") from None
            if not d.is_finite():
                raise _fail(path, lines[i], f"invalid timestamp {text!r}")
            q = d.to_integral_value(rounding=ROUND_HALF_EVEN)
            rounded += q != d
            out[i] = int(q)
        ms = pl.Series(out, dtype=pl.Int64)
    return ms, rounded


def parse_text_file(path: Path, fmt: str = "auto") -> ParsedText:
    """Parse an OpenMetrics or Prometheus text file; raises InvalidInputError with file:line."""
    name = str(path)
    lines = _read_lines(path)
    if fmt == "auto":
        fmt = detect_format(path, lines)
    if fmt not in ("openmetrics", "prometheus"):
        raise InvalidInputError(f"unknown format {fmt!r}")
    df = pl.DataFrame({"line": pl.int_range(1, len(lines) + 1, eager=True, dtype=pl.UInt32),
                       "text": lines.str.strip_chars_end("\r")})
    if fmt == "openmetrics":
        eof = df.filter(pl.col("text") == "# EOF")
        if len(eof) == 0:
            raise _fail(name, len(lines), "OpenMetrics input must end with '# EOF'")
        eof_line = eof["line"][0]
        after = df.filter((pl.col("line") > eof_line) & (pl.col("text").str.strip_chars() != ""))
        if len(after):
            raise _fail(name, after["line"][0], "content after '# EOF'")
        df = df.filter(pl.col("line") < eof_line)
        blank = df.filter(pl.col("text") == "")
        if len(blank):
            raise _fail(name, blank["line"][0], "empty line (not allowed in OpenMetrics)")
    else:
        df = df.filter(pl.col("text").str.strip_chars() != "")
    is_comment = pl.col("text").str.starts_with("#")
    types = _parse_comments(name, df.filter(is_comment).select("line", "text"), fmt)
    samples = df.filter(~is_comment)
    # Drop OpenMetrics exemplars (" # {...} v [ts]") before splitting the sample line.
    text = samples["text"].str.replace(r" # \{[^}]*\}[^{}]*$", "")
    groups = text.str.extract_groups(_SAMPLE_RE)
    samples = samples.with_columns(
        series=groups.struct.field("1"), value_text=groups.struct.field("2"),
        ts_text=groups.struct.field("3"))
    bad = samples.filter(pl.col("series").is_null())
    if len(bad):
        raise _fail(name, bad["line"][0], f"malformed sample line {bad['text'][0][:80]!r}")
    values = _parse_values(name, samples)
    ts, rounded = _parse_ts_ms(name, samples, fmt)
    uniq = samples.select("series", "line").group_by("series", maintain_order=True).first()
    series_text = uniq["series"].to_list()
    for text_i, line_i in zip(series_text, uniq["line"].to_list()):
        try:
            parse_series(text_i)
        except InvalidInputError as e:
            raise _fail(name, line_i, str(e)) from None
    sid_map = pl.DataFrame({"series": series_text,
                            "sid": pl.int_range(0, len(series_text), eager=True, dtype=pl.UInt32)})
    frame = pl.DataFrame({"series": samples["series"], "ts": ts, "value": values,
                          "line": samples["line"]}).join(sid_map, on="series", how="left",
                                                          maintain_order="left")
    return ParsedText(series_text, frame.select("sid", "ts", "value", "line"), types, rounded)


def family_candidates(family: str, kind: str) -> list[str]:
    """Sample names a `# TYPE family kind` declaration covers."""
    if kind == "counter":
        return [family, family + "_total", family + "_created"]
    if kind == "histogram":
        return [family + "_bucket", family + "_sum", family + "_count", family + "_created",
                family + "_gcount", family + "_gsum"]
    if kind == "summary":
        return [family, family + "_sum", family + "_count", family + "_created"]
    return [family]


def infer_type(metric_name: str, declared: dict[str, str]) -> str:
    """Metric type of a sample name: from TYPE declarations, then name suffixes, then unknown."""
    if metric_name in declared:
        return declared[metric_name]
    if metric_name.endswith(("_total", "_count", "_sum", "_bucket")):
        return "counter"
    return "unknown"


def name_types(types: dict[str, str]) -> dict[str, str]:
    """Expand family TYPE declarations to a sample-name -> type map."""
    out: dict[str, str] = {}
    for family, kind in types.items():
        for name in family_candidates(family, kind):
            out.setdefault(name, kind)
    assert all(t in METRIC_TYPES for t in out.values())
    return out


__all__ = ["ParsedText", "parse_text_file", "infer_type", "name_types", "METRIC_NAME"]
