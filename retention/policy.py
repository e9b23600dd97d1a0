"""The retention policy document (DESIGN §5): model, validation, and per-series resolution.

A policy gives, for every (tenant, series, resolution), how long that tier keeps the series:

1. the **first rule** (in order) whose selector matches the series and whose `tenant` is unset or
   equal to the block's tenant decides the series' settings; a resolution the rule does not name
   falls through to step 2 (a rule may set only `raw`, say);
2. the tenant's override for that resolution;
3. the default for that resolution;
4. otherwise `forever`.

`downsample: false` on the matching rule means the series is not downsampled, so its raw data
may leave without waiting for a coarser tier; every other series' data leaves a tier only once
the next tier that should still hold it exists (the safety rule, `retention.select`).

Stored as JSON at `_strata/retention/policy.json`:

    {"version": 1, "generation": 4,
     "defaults": {"raw": "30d", "5m": "180d", "1h": "2y", "1d": "forever"},
     "tenants": {"acme": {"raw": "14d"}},
     "rules": [{"selector": "{__name__=~\\"go_.*\\"}", "retention": {"raw": "7d"}, "downsample": false},
               {"selector": "{job=\\"billing\\"}", "tenant": "acme", "retention": {"raw": "400d"}}]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

from blocks.units import parse_duration_ms
from blocks.errors import InvalidInputError
from blocks.labels import Labels
from blocks.layout import RESERVED_PREFIX, validate_tenant
from blocks.meta import Resolution
from blocks.selectors import Selector, parse_selector

POLICY_VERSION = 1
POLICY_KEY = f"{RESERVED_PREFIX}retention/policy.json"
HISTORY_PREFIX = f"{RESERVED_PREFIX}retention/history/"
FOREVER = "forever"
RESOLUTIONS = tuple(r.label for r in Resolution)  # raw, 5m, 1h, 1d


def parse_retention(text: str) -> int | None:
    """'30d' -> ms; 'forever' -> None. Zero is refused (use a deletion, not a policy)."""
    if not isinstance(text, str):
        raise InvalidInputError(f"invalid duration {text!r}: use e.g. 7d, 90d, 2y or forever")
    if text.strip() == FOREVER:
        return None
    ms = parse_duration_ms(text)
    if ms <= 0:
        raise InvalidInputError(f"invalid duration {text!r}: must be positive (or forever)")
    if ms > MAX_RETENTION_MS:
        raise InvalidInputError(f"invalid duration {text!r}: more than 1000y; say forever")
    return ms


MAX_RETENTION_MS = 1000 * 31_536_000_000


def check_tier_order(durations: Mapping[str, str], where: str) -> None:
    """A coarser tier kept for less time than a finer one it is built from is refused:
    e.g. `raw=30d 5m=7d` (the 5m tier exists to outlive raw). Unset tiers are not compared."""
    set_ = [(r, parse_retention(durations[r])) for r in RESOLUTIONS if r in durations]
    for (fine, fine_ms), (coarse, coarse_ms) in zip(set_, set_[1:]):
        if coarse_ms is not None and (fine_ms is None or coarse_ms < fine_ms):
            raise InvalidInputError(
                f"{where}: {coarse}={durations[coarse]} is shorter than {fine}={durations[fine]}; a coarser tier "
                "should outlive the finer one it summarises (set them equal to drop both together)")


def _durations(raw: Any, where: str) -> dict[str, str]:
    if not isinstance(raw, Mapping):
        raise InvalidInputError(f"{where}: want an object of resolution -> duration")
    out = {}
    for key, value in raw.items():
        res = Resolution.parse(str(key)).label
        parse_retention(value)
        out[res] = str(value).strip()
    return out


@dataclass(frozen=True)
class Rule:
    """One ordered per-selector rule."""

    selector: str
    retention: dict[str, str] = field(default_factory=dict)
    downsample: bool = True
    tenant: str | None = None

    def parsed(self) -> Selector:
        """The selector, parsed (cached by blocks.selectors)."""
        return parse_selector(self.selector)

    def to_dict(self) -> dict:
        """JSON form (omits defaults)."""
        d: dict[str, Any] = {"selector": self.selector, "retention": dict(self.retention)}
        if not self.downsample:
            d["downsample"] = False
        if self.tenant is not None:
            d["tenant"] = self.tenant
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "Rule":
        """Validate and build a rule."""
        if not isinstance(d, Mapping) or "selector" not in d:
            raise InvalidInputError(f"{where}: want an object with a selector")
        unknown = set(d) - {"selector", "retention", "downsample", "tenant"}
        if unknown:
            raise InvalidInputError(f"{where}: unknown fields {sorted(unknown)}")
        parse_selector(str(d["selector"]))
        downsample = d.get("downsample", True)
        if not isinstance(downsample, bool):
            raise InvalidInputError(f"{where}: downsample must be true or false")
        tenant = d.get("tenant")
        if tenant is not None:
            validate_tenant(tenant)
        retention = _durations(d.get("retention", {}), f"{where}.retention")
        if not retention and downsample:
            raise InvalidInputError(f"{where}: a rule needs a retention or downsample: false")
        return cls(str(d["selector"]), retention, downsample, tenant)


@dataclass(frozen=True)
class SeriesPolicy:
    """What the policy says about one series of one tenant."""

    retention_ms: dict[str, int | None]  # resolution label -> ms, None = forever
    downsample: bool
    source: dict[str, str]               # resolution label -> "rule 2", "tenant acme", "default", "unset"

    def keep_ms(self, res: Resolution) -> int | None:
        """How long tier `res` keeps the series (None = forever)."""
        return self.retention_ms[res.label]


@dataclass(frozen=True)
class Policy:
    """The whole validated policy document."""

    defaults: dict[str, str] = field(default_factory=dict)
    tenants: dict[str, dict[str, str]] = field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    generation: int = 0

    # --- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON form."""
        return {"version": POLICY_VERSION, "generation": self.generation, "defaults": dict(self.defaults),
                "tenants": {t: dict(d) for t, d in sorted(self.tenants.items())},
                "rules": [r.to_dict() for r in self.rules]}

    def to_json(self) -> bytes:
        """Canonical JSON bytes."""
        return (json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_dict(cls, d: Any) -> "Policy":
        """Validate a parsed document; InvalidInputError names the offending field."""
        if not isinstance(d, Mapping):
            raise InvalidInputError("retention policy: want a JSON object")
        if d.get("version", POLICY_VERSION) != POLICY_VERSION:
            raise InvalidInputError(f"retention policy: unsupported version {d.get('version')!r}")
        unknown = set(d) - {"version", "generation", "defaults", "tenants", "rules"}
        if unknown:
            raise InvalidInputError(f"retention policy: unknown fields {sorted(unknown)}")
        gen = d.get("generation", 0)
        if not isinstance(gen, int) or gen < 0:
            raise InvalidInputError("retention policy: generation must be a non-negative integer")
        tenants_raw = d.get("tenants", {})
        if not isinstance(tenants_raw, Mapping):
            raise InvalidInputError("retention policy: tenants must be an object")
        tenants = {validate_tenant(t): _durations(v, f"tenants.{t}") for t, v in tenants_raw.items()}
        rules_raw = d.get("rules", [])
        if not isinstance(rules_raw, list):
            raise InvalidInputError("retention policy: rules must be a list")
        rules = tuple(Rule.from_dict(r, f"rules[{i}]") for i, r in enumerate(rules_raw))
        return cls(_durations(d.get("defaults", {}), "defaults"), tenants, rules, gen)

    @classmethod
    def from_json(cls, data: bytes) -> "Policy":
        """Parse and validate policy bytes."""
        try:
            doc = json.loads(data)
        except ValueError as e:
            raise InvalidInputError(f"retention policy: invalid JSON: {e}") from None
        return cls.from_dict(doc)

    # --- edits (each returns a new policy) ---------------------------------------------------
    def with_durations(self, values: Mapping[str, str], tenant: str | None) -> "Policy":
        """Set durations for the defaults or one tenant."""
        new = _durations(values, "set")
        if tenant is None:
            check_tier_order({**self.defaults, **new}, "defaults")
            return replace(self, defaults={**self.defaults, **new})
        validate_tenant(tenant)
        check_tier_order({**self.tenants.get(tenant, {}), **new}, f"tenant {tenant}")
        return replace(self, tenants={**self.tenants, tenant: {**self.tenants.get(tenant, {}), **new}})

    def without_durations(self, resolutions: Iterable[str], tenant: str | None) -> "Policy":
        """Unset durations (the tier falls back to the next level)."""
        labels = [Resolution.parse(r).label for r in resolutions]
        if tenant is None:
            return replace(self, defaults={k: v for k, v in self.defaults.items() if k not in labels})
        validate_tenant(tenant)
        kept = {k: v for k, v in self.tenants.get(tenant, {}).items() if k not in labels}
        tenants = {t: d for t, d in self.tenants.items() if t != tenant}
        if kept:
            tenants[tenant] = kept
        return replace(self, tenants=tenants)

    def with_rule(self, rule: Rule, position: int | None = None) -> "Policy":
        """Insert a rule (at the end by default; first match wins)."""
        Rule.from_dict(rule.to_dict(), "rule")
        rules = list(self.rules)
        if position is None:
            rules.append(rule)
        elif 0 <= position <= len(rules):
            rules.insert(position, rule)
        else:
            raise InvalidInputError(f"invalid position {position}: the policy has {len(rules)} rules")
        return replace(self, rules=tuple(rules))

    def without_rule(self, which: str) -> "Policy":
        """Remove a rule by index or by its exact selector text."""
        rules = list(self.rules)
        if which.isdigit():
            i = int(which)
            if i >= len(rules):
                raise InvalidInputError(f"no rule {i}: the policy has {len(rules)} rules")
            del rules[i]
        else:
            hits = [i for i, r in enumerate(rules) if r.selector == which]
            if not hits:
                raise InvalidInputError(f"no rule with selector {which!r}")
            if len(hits) > 1:
                raise InvalidInputError(f"{len(hits)} rules have selector {which!r}: remove by index")
            del rules[hits[0]]
        return replace(self, rules=tuple(rules))

    # --- evaluation --------------------------------------------------------------------------
    def rules_for(self, tenant: str) -> list[tuple[int, Rule, Selector]]:
        """The rules that can apply to `tenant`, in order, with their parsed selectors."""
        return [(i, r, r.parsed()) for i, r in enumerate(self.rules) if r.tenant in (None, tenant)]

    def base(self, tenant: str) -> SeriesPolicy:
        """The tenant's settings for a series no rule matches."""
        ms, src = {}, {}
        t = self.tenants.get(tenant, {})
        for res in RESOLUTIONS:
            if res in t:
                ms[res], src[res] = parse_retention(t[res]), f"tenant {tenant}"
            elif res in self.defaults:
                ms[res], src[res] = parse_retention(self.defaults[res]), "default"
            else:
                ms[res], src[res] = None, "unset"
        return SeriesPolicy(ms, True, src)

    def for_series(self, tenant: str, labels: Labels | Mapping[str, str],
                   rules: list[tuple[int, Rule, Selector]] | None = None) -> SeriesPolicy:
        """The settings of one series: first matching rule, then tenant, then defaults."""
        base = self.base(tenant)
        for i, rule, sel in self.rules_for(tenant) if rules is None else rules:
            if sel.matches(labels):
                ms, src = dict(base.retention_ms), dict(base.source)
                for res, text in rule.retention.items():
                    ms[res], src[res] = parse_retention(text), f"rule {i} {rule.selector}"
                return SeriesPolicy(ms, rule.downsample, src)
        return base

    def no_downsample_selectors(self, tenant: str) -> list[Selector]:
        """Selectors whose series the compactor must not downsample for `tenant`.

        Only a rule that is the *first* match of a series decides it, so the compactor asks
        `for_series(...).downsample` per series; this list is the quick pre-check.
        """
        return [sel for _, r, sel in self.rules_for(tenant) if not r.downsample]


@dataclass(frozen=True)
class Salvaged:
    """A stored policy read leniently for the nightly job: bad entries hold only what they name.

    A bad duration becomes `forever` for that tier; a bad rule whose selector still parses becomes a
    hold rule in the same position (its series keep everything); an entry that names nothing that
    can exist (an invalid tenant name, an unknown resolution, an unknown field) is dropped. When an
    entry's scope cannot be known (unparseable selector, malformed section), retention is skipped for
    its tenant, or for every tenant. Compaction and downsampling never depend on it.
    """

    policy: Policy
    problems: tuple[str, ...] = ()
    hold_all: bool = False
    held_tenants: frozenset[str] = frozenset()

    def applies_to(self, tenant: str) -> bool:
        """Whether retention may run for `tenant` this pass."""
        return not self.hold_all and tenant not in self.held_tenants


def _salvage_durations(raw: Any, where: str, problems: list[str]) -> dict[str, str] | None:
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: want an object of resolution -> duration")
        return None
    out = {}
    for key, value in raw.items():
        try:
            res = Resolution.parse(str(key)).label
        except InvalidInputError as e:
            problems.append(f"{where}.{key}: {e} (ignored)")
            continue
        try:
            parse_retention(value)
            out[res] = str(value).strip()
        except InvalidInputError as e:
            problems.append(f"{where}.{key}: {e} (kept forever until fixed)")
            out[res] = FOREVER
    return out


def salvage_policy(data: bytes) -> Salvaged:
    """Parse like `Policy.from_json`, but turn each bad entry into a hold on what it names."""
    try:
        return Salvaged(Policy.from_json(data))
    except InvalidInputError:
        pass
    problems: list[str] = []
    try:
        d = json.loads(data)
    except ValueError as e:
        return Salvaged(Policy(), (f"retention policy: invalid JSON: {e}; retention skipped",), hold_all=True)
    if not isinstance(d, Mapping) or d.get("version", POLICY_VERSION) != POLICY_VERSION:
        return Salvaged(Policy(), ("retention policy: not a version-1 policy object; retention skipped",),
                        hold_all=True)
    hold_all, held = False, set()
    unknown = set(d) - {"version", "generation", "defaults", "tenants", "rules"}
    if unknown:
        problems.append(f"retention policy: unknown fields {sorted(unknown)} (ignored)")
    gen = d.get("generation", 0)
    if not isinstance(gen, int) or gen < 0:
        problems.append("retention policy: generation must be a non-negative integer")
        gen = 0
    defaults = _salvage_durations(d.get("defaults", {}), "defaults", problems)
    if defaults is None:
        hold_all, defaults = True, {}
    tenants: dict[str, dict[str, str]] = {}
    tenants_raw = d.get("tenants", {})
    if not isinstance(tenants_raw, Mapping):
        problems.append("retention policy: tenants must be an object")
        hold_all = True
        tenants_raw = {}
    for t, v in tenants_raw.items():
        try:
            validate_tenant(t)
        except InvalidInputError as e:
            problems.append(f"tenants.{t}: {e} (ignored: no such tenant can exist)")
            continue
        durations = _salvage_durations(v, f"tenants.{t}", problems)
        if durations is None:
            held.add(t)
        else:
            tenants[t] = durations
    rules: list[Rule] = []
    rules_raw = d.get("rules", [])
    if not isinstance(rules_raw, list):
        problems.append("retention policy: rules must be a list")
        hold_all, rules_raw = True, []
    for i, r in enumerate(rules_raw):
        where = f"rules[{i}]"
        try:
            rules.append(Rule.from_dict(r, where))
            continue
        except InvalidInputError as e:
            problem = str(e)
        if not isinstance(r, Mapping):
            problems.append(f"{problem}; retention skipped for every tenant")
            hold_all = True
            continue
        tenant = r.get("tenant")
        if tenant is not None:
            try:
                validate_tenant(tenant)
            except InvalidInputError:
                problems.append(f"{problem} (ignored: it names no tenant that can exist)")
                continue
        try:
            parse_selector(str(r["selector"]))
        except (InvalidInputError, KeyError):
            if tenant is None:
                problems.append(f"{problem}; retention skipped for every tenant")
                hold_all = True
            else:
                problems.append(f"{problem}; retention skipped for tenant {tenant}")
                held.add(tenant)
            continue
        problems.append(f"{problem}; its series are kept forever until it is fixed")
        rules.append(Rule(str(r["selector"]), {res: FOREVER for res in RESOLUTIONS}, True, tenant))
    return Salvaged(Policy(defaults, tenants, tuple(rules), gen), tuple(problems), hold_all, frozenset(held))
