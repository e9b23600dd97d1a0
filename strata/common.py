"""Shared CLI plumbing: option types, config loading, output rendering, errors -> exit codes."""

from __future__ import annotations

import functools
import json
import os
import sys
import tomllib
from dataclasses import fields
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from blocks.errors import (  # noqa: F401 (exit codes re-exported for the commands)
    EXIT_ERROR, EXIT_HALT, EXIT_OK, EXIT_RETRY, EXIT_USAGE, HaltError, InvalidInputError, RetryableError, StrataError,
    exit_code_for,
)
from blocks.units import fmt_bytes, fmt_time, parse_duration_ms, parse_time_ms  # noqa: F401  (re-exported for the commands)
from blocks.objstore import StoreConfig



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
