"""The `strata` root command: mounts every package's command group."""

from __future__ import annotations

import os
import sys

import typer
from typer.core import TyperGroup

from strata.blocks_cmd import app as blocks_app
from strata.compact_cmd import compact_cmd
from strata.import_cmd import generate_cmd, import_cmd
from strata.receive_cmd import receive_cmd
from strata.retention_cmd import app as retention_app
from strata.gateway_cmd import app as gateway_app
from strata.sql_cmd import sql_cmd

HELP = {"help_option_names": ["-h", "--help"]}


class _RootGroup(TyperGroup):
    """The root group: before the subcommand parses its flags, the config file's command tables
    become click's `default_map` (so flags and environment still win)."""

    def parse_args(self, ctx, args):
        rest = super().parse_args(ctx, args)
        from blocks.errors import StrataError

        try:
            _config_defaults(ctx, [*getattr(ctx, "_protected_args", []), *ctx.args])
        except StrataError as e:
            typer.echo(f"error: {e}", err=True)
            ctx.exit(1)
        return rest


def _flags_without_value_hint() -> None:
    """typer 0.2x prints a `<bool>` value hint after on/off flags (`--force <bool>`), which take no
    value; show none for flags."""
    from typer import core

    shown = core.TyperOption.display_type_rich
    if getattr(shown, "_strata", False):
        return

    def display_type_rich(self, ctx):
        return None if getattr(self, "is_flag", False) else shown(self, ctx)

    display_type_rich._strata = True
    core.TyperOption.display_type_rich = display_type_rich


_flags_without_value_hint()

app = typer.Typer(
    name="strata",
    cls=_RootGroup,
    context_settings=HELP,
    help="Strata: the long-term tier for Prometheus metrics (blocks on object storage, "
         "downsampled 5m/1h/1d, retention, store-gateway, remote-write receiver).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version
        try:
            v = version("strata")
        except PackageNotFoundError:
            v = "unknown (not installed)"
        typer.echo(f"strata {v}")
        raise typer.Exit()


# Config file tables that hold command defaults: table -> command path.
CONFIG_TABLES = {"compactor": ("compact",), "gateway": ("gateway", "serve"), "receive": ("receive",),
                 "retention": ("retention", "plan")}


def _config_path(args: list[str]) -> str | None:
    for i, a in enumerate(args):
        if a == "--config" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return os.environ.get("STRATA_CONFIG")


def _config_defaults(ctx, args: list[str]) -> None:
    """One precedence for every command: flag > environment > config file table > built-in default.

    `[compactor]`, `[gateway]`, `[receive]` and `[retention]` in `--config` give defaults to
    `strata compact`, `gateway serve`, `receive` and `retention plan/apply`, keyed by option name
    (`deletion_delay = "48h"` or `deletion-delay`); an unknown key is an error.
    """
    import tomllib

    from blocks.errors import InvalidInputError

    path = _config_path(args)
    if not path or not args:
        return
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return  # the command's own --config loading reports it
    default_map: dict = {}
    for table, cmd_path in CONFIG_TABLES.items():
        values = doc.get(table)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise InvalidInputError(f"config {path}: [{table}] must be a table")
        cmd = ctx.command
        for name in cmd_path:
            cmd = cmd.get_command(ctx, name)
        params = {p.name for p in cmd.params}
        entries = {k.replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(entries) - params - {"bucket", "config"})
        if unknown:
            raise InvalidInputError(f"config {path}: unknown [{table}] keys {unknown} "
                                    f"(options of `strata {' '.join(cmd_path)}`)")
        node = default_map
        for name in cmd_path[:-1]:
            node = node.setdefault(name, {})
        node[cmd_path[-1]] = entries
        if table == "retention":
            node["apply"] = entries
    ctx.default_map = default_map


@app.callback()
def _root(version: bool = typer.Option(False, "--version", "-V", help="Print the version and exit.",
                                       callback=_version, is_eager=True)) -> None:
    """Strata: the long-term tier for Prometheus metrics."""


app.command("import")(import_cmd)
app.command("generate")(generate_cmd)
app.command("compact")(compact_cmd)
app.command("receive")(receive_cmd)
app.command("sql")(sql_cmd)
app.add_typer(blocks_app, name="blocks")
app.add_typer(retention_app, name="retention")
app.add_typer(gateway_app, name="gateway")


def _reflow(doc: str | None) -> str | None:
    """Join a docstring paragraph's source line breaks (rich help keeps them, so a paragraph wrapped
    at 100 columns in the source shows lines like `(retry).` alone on a narrower terminal);
    indented lines (examples) keep theirs."""
    if not doc:
        return doc
    import inspect

    out = []
    for para in inspect.cleandoc(doc).split("\n\n"):
        lines = para.split("\n")
        out.append(para if any(ln.startswith(" ") for ln in lines) else " ".join(ln.strip() for ln in lines))
    return "\n\n".join(out)


def _reflow_help(typer_app: typer.Typer) -> None:
    for info in typer_app.registered_commands:
        if info.callback is not None:
            info.callback.__doc__ = _reflow(info.callback.__doc__)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _reflow_help(group.typer_instance)


_reflow_help(app)


def main() -> None:
    """Console entry point.

    Ends with os._exit after flushing: every file we write is closed and fsynced by then, and
    skipping interpreter teardown avoids an intermittent abort ("terminate called without an
    active exception") in native thread-pool destructors of the Arrow/Polars runtimes.
    """
    code = 0
    try:
        app()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
