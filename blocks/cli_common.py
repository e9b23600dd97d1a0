"""Shared CLI plumbing: option types, config loading, output rendering, errors -> exit codes."""

from __future__ import annotations

import functools
import json
import os
import sys
import tomllib
from dataclasses import fields
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from blocks.errors import HaltError, InvalidInputError, RetryableError, StrataError
from blocks.objstore import StoreConfig

EXIT_OK = 0
EXIT_ERROR = 1      # bad input or a failure that is neither halt nor retry
EXIT_USAGE = 2      # click's own usage errors
EXIT_HALT = 3       # integrity problem: do not retry, alert
EXIT_RETRY = 75     # transient (EX_TEMPFAIL): the CronJob may retry


class Output(str, Enum):
    """Rendering of command results."""

    text = "text"
    json = "json"


BucketOpt = Annotated[Optional[str], typer.Option(
    "--bucket", envvar="STRATA_BUCKET",
    help="Bucket URL: s3://bucket or s3://bucket/prefix, file:///abs/path, or a local path.")]
ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", envvar="STRATA_CONFIG", help="TOML config file (its store table: url, endpoint_url, region, ...).")]
OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="Output format.")]
TenantOpt = Annotated[str, typer.Option("--tenant", envvar="STRATA_TENANT", help="Tenant name.")]


def load_store_config(bucket: str | None, config: Path | None) -> StoreConfig:
    """StoreConfig from the config file's [store] table, overridden by --bucket and env.

    Environment read here (and nowhere below the CLI): STRATA_S3_ENDPOINT, AWS_REGION.
    """
    values: dict[str, Any] = {}
    if config is not None:
        try:
            doc = tomllib.loads(config.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise InvalidInputError(f"config {config}: {e}") from None
        unknown_top = set(doc) - {"store", "compactor", "retention", "gateway", "receive"}
        if unknown_top:
            raise InvalidInputError(f"config {config}: unknown tables {sorted(unknown_top)}")
        values = dict(doc.get("store", {}))
        allowed = {f.name for f in fields(StoreConfig)}
        unknown = set(values) - allowed
        if unknown:
            raise InvalidInputError(f"config {config}: unknown [store] keys {sorted(unknown)}")
    if bucket:
        values["url"] = bucket
    if "url" not in values:
        raise InvalidInputError("no bucket: pass --bucket, set STRATA_BUCKET, or set [store] url in --config")
    if os.environ.get("STRATA_S3_ENDPOINT") and "endpoint_url" not in values:
        values["endpoint_url"] = os.environ["STRATA_S3_ENDPOINT"]
    if os.environ.get("AWS_REGION") and "region" not in values:
        values["region"] = os.environ["AWS_REGION"]
    try:
        return StoreConfig(**values)
    except TypeError as e:
        raise InvalidInputError(f"invalid store config: {e}") from None


def fmt_time(ms: int) -> str:
    """Millisecond timestamp as ISO-8601 UTC."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time_ms(text: str) -> int:
    """Parse integer ms, or an ISO-8601 date/time (UTC when no zone is given)."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInputError(f"invalid time {text!r}: use ms since epoch or ISO-8601") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000, "y": 31_536_000_000}


def parse_duration_ms(text: str) -> int:
    """Parse a Prometheus-style duration ('90m', '2h', '1d12h', '400d') to ms."""
    import re

    text = text.strip()
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise InvalidInputError(f"invalid duration {text!r}: use e.g. 90m, 2h, 7d, 1y")
    return sum(int(n) * _UNITS_MS[u] for n, u in parts)


def fmt_bytes(n: int) -> str:
    """Human-readable byte count."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def render(output: Output, data: Any, text: Callable[[Any], str]) -> None:
    """Print `data` as JSON or through its text renderer."""
    if output == Output.json:
        typer.echo(json.dumps(data, indent=1, sort_keys=True, default=str))
    else:
        typer.echo(text(data))


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain aligned text table."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def exit_code_for(exc: BaseException) -> int:
    """The one place that maps error families to exit codes."""
    if isinstance(exc, HaltError):
        return EXIT_HALT
    if isinstance(exc, RetryableError):
        return EXIT_RETRY
    return EXIT_ERROR


def cli_errors(fn: Callable) -> Callable:
    """Turn Strata errors into one line on stderr and the family's exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except StrataError as e:
            kind = "halt" if isinstance(e, HaltError) else "retry" if isinstance(e, RetryableError) else "error"
            typer.echo(f"{kind}: {e}", err=True)
            raise typer.Exit(exit_code_for(e)) from None
        except OSError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(EXIT_ERROR) from None

    return wrapper


def is_tty() -> bool:
    """True when stderr is a terminal (progress bars); otherwise logs are JSON lines."""
    return sys.stderr.isatty()
