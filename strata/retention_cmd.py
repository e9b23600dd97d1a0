"""`strata retention`: show and edit the policy (compare-and-swap), plan, apply."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from strata.common import (
    BucketOpt, ConfigOpt, Output, OutputOpt, cli_errors, fmt_bytes, fmt_time, load_store_config,
    parse_duration_ms, parse_time_ms, render, table,
)
from blocks.errors import InvalidInputError
from blocks.layout import validate_tenant
from blocks.objstore import open_store
from blocks.marks import DELETION_DELAY
from retention.apply import apply_plan, plan_retention
from retention.policy import RESOLUTIONS, Policy, Rule
from retention.store import PolicyConflict, edit_policy, load_policy, save_policy

MODEL = """
Policy model. Each tier (raw, 5m, 1h, 1d) keeps a series for a duration ("forever" allowed).

For a series of tenant T, the FIRST rule (in order) whose selector matches it and whose tenant is unset or T decides; a tier that rule does not name falls back to T's override, then to the default, then to forever.

A rule with --no-downsample keeps its series out of the 5m/1h/1d tiers, so their raw data may go without waiting. Every other series leaves a tier only once the next tier that should still hold it has a block built from the same data (the safety rule); `plan` lists such blocks as WAIT with the reason.

Deletion is two-phase: a deletion-mark.json now, removal after --deletion-delay (meta.json first). The nightly `strata compact` applies the policy after downsampling.

\b
Example:
  strata retention set raw=30d 5m=180d 1h=2y 1d=forever
  strata retention set raw=14d --tenant acme
  strata retention rule add '{__name__=~"go_.*"}' raw=7d --no-downsample
  strata retention rule add '{job="billing"}' raw=400d --tenant acme
  strata retention plan
  strata retention apply --dry-run
"""

app = typer.Typer(context_settings={"help_option_names": ["-h", "--help"]}, help="Retention policies per resolution, tenant and series selector.\n" + MODEL,
                  no_args_is_help=True)
rule_app = typer.Typer(context_settings={"help_option_names": ["-h", "--help"]}, help="Ordered per-selector rules (first match wins); see `strata retention --help` for the model.", no_args_is_help=True)
app.add_typer(rule_app, name="rule")

TenantFilter = Annotated[Optional[str], typer.Option("--tenant", help="A tenant (default: the defaults / all tenants).")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Show the result without writing anything.")]
ExpectGen = Annotated[Optional[int], typer.Option("--expect-generation",
                                                  help="Fail unless the stored policy is at this generation.")]


def _pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        res, sep, dur = item.partition("=")
        if not sep or not res or not dur:
            raise InvalidInputError(f"invalid setting {item!r}: use RESOLUTION=DURATION, e.g. raw=30d or 1d=forever")
        out[res.strip()] = dur.strip()
    return out


def _policy_text(d: dict) -> str:
    p = Policy.from_dict(d["policy"])
    lines = [f"retention policy generation {p.generation}"]
    rows = [["default"] + [p.defaults.get(r, "-") for r in RESOLUTIONS]]
    rows += [[f"tenant {t}"] + [o.get(r, "-") for r in RESOLUTIONS] for t, o in sorted(p.tenants.items())]
    lines.append(table(rows, ["scope", *RESOLUTIONS]))
    if p.rules:
        lines.append("rules (first match wins):")
        rows = [[str(i), r.selector, r.tenant or "*"] + [r.retention.get(x, "-") for x in RESOLUTIONS]
                + ["no" if not r.downsample else "yes"] for i, r in enumerate(p.rules)]
        lines.append(table(rows, ["#", "selector", "tenant", *RESOLUTIONS, "downsample"]))
    if d.get("effective"):
        e = d["effective"]
        lines.append(f"effective for tenant {e['tenant']} (series no rule matches): "
                     + ", ".join(f"{r}={e['retention'][r]} ({e['source'][r]})" for r in RESOLUTIONS))
    if d.get("dry_run"):
        lines.append("dry run: nothing was saved")
    return "\n".join(lines)


def _show(policy: Policy, tenant: str | None, output: Output, dry_run: bool = False) -> None:
    d: dict = {"policy": policy.to_dict()}
    if dry_run:
        d["dry_run"] = True
    if tenant:
        base = policy.base(tenant)
        d["effective"] = {"tenant": tenant, "source": base.source,
                          "retention": {r: (policy.tenants.get(tenant, {}).get(r) or policy.defaults.get(r) or "forever")
                                        for r in RESOLUTIONS}}
    render(output, d, _policy_text)


def _store(bucket, config, *, create: bool = False):
    """Editing commands may create a local bucket; reading ones refuse a path that does not exist."""
    return open_store(load_store_config(bucket, config), create=create)


@app.command("show")
@cli_errors
def show_cmd(bucket: BucketOpt = None, config: ConfigOpt = None, tenant: TenantFilter = None,
             output: OutputOpt = Output.text) -> None:
    """Print the policy (and, with --tenant, what applies to that tenant's series)."""
    if tenant is not None:
        validate_tenant(tenant)  # before any I/O, as every other command does
    policy, _ = load_policy(_store(bucket, config))
    _show(policy, tenant, output)


def _edit(bucket, config, change, expect_generation, dry_run: bool, output: Output, tenant: str | None = None) -> None:
    """One compare-and-swap edit of the policy (or its dry run), then the policy as it now reads."""
    _, new = edit_policy(_store(bucket, config, create=True), change, expect_generation=expect_generation,
                         dry_run=dry_run)
    _show(new, tenant, output, dry_run)


@app.command("set")
@cli_errors
def set_cmd(settings: Annotated[list[str], typer.Argument(help="RESOLUTION=DURATION pairs, e.g. raw=30d 5m=180d 1d=forever.")],
            bucket: BucketOpt = None, config: ConfigOpt = None, tenant: TenantFilter = None,
            dry_run: DryRun = False, expect_generation: ExpectGen = None, output: OutputOpt = Output.text) -> None:
    """Set default durations, or a tenant's overrides with --tenant.

    Example: strata retention set raw=30d 5m=180d 1h=2y 1d=forever
    """
    values = _pairs(settings)
    _edit(bucket, config, lambda p: p.with_durations(values, tenant), expect_generation, dry_run, output, tenant)


@app.command("unset")
@cli_errors
def unset_cmd(resolutions: Annotated[list[str], typer.Argument(help="Resolutions to unset: raw, 5m, 1h, 1d.")],
              bucket: BucketOpt = None, config: ConfigOpt = None, tenant: TenantFilter = None,
              dry_run: DryRun = False, expect_generation: ExpectGen = None, output: OutputOpt = Output.text) -> None:
    """Remove default durations (or a tenant's overrides); the tier falls back a level.

    Example: strata retention unset raw --tenant acme
    """
    _edit(bucket, config, lambda p: p.without_durations(resolutions, tenant), expect_generation, dry_run, output,
          tenant)


@app.command("import")
@cli_errors
def import_cmd(path: Annotated[Path, typer.Argument(help="Policy JSON (the document `show -o json` prints under 'policy').")],
               bucket: BucketOpt = None, config: ConfigOpt = None, dry_run: DryRun = False,
               expect_generation: ExpectGen = None,
               if_absent: Annotated[bool, typer.Option("--if-absent", help="Create the policy only if the bucket has none; otherwise keep the stored one and exit 0 (a bootstrap that can never overwrite later edits).")] = False,
               output: OutputOpt = Output.text) -> None:
    """Replace the whole policy with a validated JSON document (compare-and-swap), e.g. a ConfigMap's bootstrap.

    Example: strata retention import /etc/strata/retention-policy.json --if-absent
    """
    try:
        doc = Policy.from_json(path.read_bytes())
    except OSError as e:
        raise InvalidInputError(f"cannot read {path}: {e}") from None
    if if_absent:
        if expect_generation not in (None, 0):
            raise InvalidInputError("--if-absent means --expect-generation 0; do not give another generation")
        store = _store(bucket, config, create=True)
        current, etag = load_policy(store)
        if etag is None:
            try:
                new = replace(doc, generation=1) if dry_run else save_policy(store, doc, None, expected_generation=0)
                _show(new, None, output, dry_run)
                return
            except PolicyConflict:  # created by someone else in between (put-if-absent lost): keep theirs
                current, _ = load_policy(store)
        typer.echo(f"kept the stored retention policy (generation {current.generation}); nothing imported", err=True)
        _show(current, None, output, dry_run=True)
        return
    _edit(bucket, config, lambda p: replace(doc, generation=p.generation), expect_generation, dry_run, output)


@rule_app.command("add")
@cli_errors
def rule_add_cmd(selector: Annotated[str, typer.Argument(help='PromQL series selector, e.g. \'{__name__=~"go_.*"}\'.')],
                 settings: Annotated[Optional[list[str]], typer.Argument(help="RESOLUTION=DURATION pairs.")] = None,
                 no_downsample: Annotated[bool, typer.Option("--no-downsample", help="Do not downsample these series.")] = False,
                 position: Annotated[Optional[int], typer.Option(help="Insert at this index (default: last).")] = None,
                 bucket: BucketOpt = None, config: ConfigOpt = None, tenant: TenantFilter = None,
                 dry_run: DryRun = False, expect_generation: ExpectGen = None, output: OutputOpt = Output.text) -> None:
    """Add a per-selector rule (first match wins).

    Example: strata retention rule add '{__name__=~"go_.*"}' raw=7d --no-downsample
    """
    rule = Rule.from_dict({"selector": selector, "retention": _pairs(settings or []),
                           "downsample": not no_downsample, **({"tenant": tenant} if tenant else {})}, "rule")
    _edit(bucket, config, lambda p: p.with_rule(rule, position), expect_generation, dry_run, output)


@rule_app.command("rm")
@cli_errors
def rule_rm_cmd(which: Annotated[str, typer.Argument(help="Rule index (see `show`) or its exact selector.")],
                bucket: BucketOpt = None, config: ConfigOpt = None, dry_run: DryRun = False,
                expect_generation: ExpectGen = None, output: OutputOpt = Output.text) -> None:
    """Remove a rule by index or selector.

    Example: strata retention rule rm 0
    """
    _edit(bucket, config, lambda p: p.without_rule(which), expect_generation, dry_run, output)


@rule_app.command("ls")
@cli_errors
def rule_ls_cmd(bucket: BucketOpt = None, config: ConfigOpt = None, output: OutputOpt = Output.text) -> None:
    """List the rules in order (first match wins)."""
    policy, _ = load_policy(_store(bucket, config))
    rules = [{"index": i, **r.to_dict()} for i, r in enumerate(policy.rules)]

    def text(rs: list[dict]) -> str:
        if not rs:
            return "no rules"
        rows = [[str(r["index"]), r["selector"], r.get("tenant") or "*"]
                + [r["retention"].get(x, "-") for x in RESOLUTIONS] + ["no" if r.get("downsample") is False else "yes"]
                for r in rs]
        return table(rows, ["#", "selector", "tenant", *RESOLUTIONS, "downsample"])

    render(output, rules, text)


def _plan_text(d: dict) -> str:
    lines = [f"retention plan (policy generation {d['policy_generation']}, now {fmt_time(d['now_ms'])}, "
             f"deletion delay {d['delay_ms'] // 3_600_000}h)"]
    # the JSON's action names, upper-cased: "delete" marks the block now; it goes after the delay
    verbs = {"delete": "DELETE", "rewrite": "REWRITE", "remove": "REMOVE", "wait": "WAIT"}
    for x in d["decisions"]:
        lines.append(f"{verbs[x['action']]:8} {x['tenant']}/{x['block']} {x['resolution']:>3} "
                     f"{fmt_bytes(x['bytes']):>10}  {x['reason']}")
    if not d["decisions"]:
        lines.append("nothing to do")
    rows = [[t["tenant"], t["resolution"], verbs[t["action"]], str(t["blocks"]), fmt_bytes(t["bytes"])]
            for t in d["totals"]]
    if rows:
        lines.append(table(rows, ["tenant", "resolution", "action", "blocks", "bytes freed"]))
    if "applied" in d:
        a = d["applied"]
        lines.append(f"applied: {len(a['marked'])} marked, {len(a['rewritten'])} rewritten, "
                     f"{len(a['removed'])} removed ({fmt_bytes(a['bytes_freed'])} freed), {len(a['waiting'])} waiting")
    elif d.get("dry_run"):
        lines.append("dry run: nothing was marked, rewritten or removed")
    return "\n".join(lines)


Delay = Annotated[str, typer.Option("--deletion-delay", help="Marked blocks are removed this long after marking.")]
Now = Annotated[Optional[str], typer.Option(help="Pretend it is this time (ms or ISO-8601).")]


@app.command("plan")
@cli_errors
def plan_cmd(bucket: BucketOpt = None, config: ConfigOpt = None, tenant: TenantFilter = None,
             deletion_delay: Delay = DELETION_DELAY, now: Now = None, output: OutputOpt = Output.text) -> None:
    """Show what apply would mark, rewrite, remove (bytes per tenant/resolution) and what waits. Read-only."""
    store = _store(bucket, config)
    policy, _ = load_policy(store)
    now_ms = parse_time_ms(now) if now else int(time.time() * 1000)
    plan = plan_retention(store, policy, now_ms, tenants=[tenant] if tenant else None,
                          delay_ms=parse_duration_ms(deletion_delay))
    render(output, plan.as_dict(), _plan_text)


@app.command("apply")
@cli_errors
def apply_cmd(bucket: BucketOpt = None, config: ConfigOpt = None, tenant: TenantFilter = None,
              deletion_delay: Delay = DELETION_DELAY, now: Now = None, dry_run: DryRun = False,
              output: OutputOpt = Output.text) -> None:
    """Plan, then mark expired blocks, rewrite blocks that lose some series, remove blocks past the delay."""
    store = _store(bucket, config)
    policy, _ = load_policy(store)
    now_ms = parse_time_ms(now) if now else int(time.time() * 1000)
    plan = plan_retention(store, policy, now_ms, tenants=[tenant] if tenant else None,
                          delay_ms=parse_duration_ms(deletion_delay))
    d = plan.as_dict()
    d["dry_run"] = dry_run
    if not dry_run:
        d["applied"] = apply_plan(store, plan, now_ms).as_dict()
    render(output, d, _plan_text)
