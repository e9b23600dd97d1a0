"""The `strata` root command: mounts every package's command group."""

from __future__ import annotations

import typer

from blocks.cli import app as blocks_app
from ingest.cli import generate_cmd, import_cmd

app = typer.Typer(
    name="strata",
    help="Strata: the long-term tier for Prometheus metrics (blocks on object storage, "
         "downsampled 5m/1h/1d, retention, store-gateway).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("import")(import_cmd)
app.command("generate")(generate_cmd)
app.add_typer(blocks_app, name="blocks")


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
