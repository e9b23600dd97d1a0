r"""PromQL series selectors (`{__name__=~"go_.*"}`, `up{job="a"}`) parsed with promql-parser
and matched against label sets with Prometheus semantics (anchored regexes; a missing label
matches as the empty string).

Regexes are RE2 (Prometheus's Go regexp dialect), here through google-re2 and in the gateway
through DuckDB's `regexp_full_match`, which is RE2 too: a pattern this module accepts is one both
engines run the same way (no backreferences, lookarounds, possessive repeats, `\Z`, or repeat
counts over 1000). `.` matches a newline (`(?s:...)`), as in Prometheus.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import re2

from blocks.errors import InvalidInputError
from blocks.labels import METRIC_NAME, Labels

_OPS = {"MatchOp.Equal": "=", "MatchOp.NotEqual": "!=", "MatchOp.Re": "=~", "MatchOp.NotRe": "!~"}


@dataclass(frozen=True)
class Matcher:
    """One label matcher."""

    name: str
    op: str
    value: str

    def matches(self, value: str) -> bool:
        """Whether a label value (\"\" when absent) satisfies the matcher."""
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        hit = compile_regex(self.value).fullmatch(value) is not None
        return hit if self.op == "=~" else not hit


_CACHE: dict[str, object] = {}
_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # our own one-line error instead of absl's log on stderr
_OPTIONS.max_mem = 8 << 20   # bounds a compiled program (RE2's default); bigger patterns are refused


def regex_sql(text: str) -> str:
    """The pattern as handed to DuckDB's RE2 `regexp_full_match` (dot matches newline)."""
    return f"(?s:{text})"


def compile_regex(text: str):
    """The compiled RE2 pattern of a matcher value; InvalidInputError names what RE2 refused."""
    pat = _CACHE.get(text)
    if pat is None:
        try:
            pat = re2.compile(regex_sql(text), _OPTIONS)
        except re2.error as e:
            msg = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
            raise InvalidInputError(f"invalid regex {text!r}: {msg} (RE2 syntax)") from None
        if len(_CACHE) > 4096:
            _CACHE.clear()
        _CACHE[text] = pat
    return pat


@dataclass(frozen=True)
class Selector:
    """A parsed series selector: every matcher must hold."""

    text: str
    matchers: tuple[Matcher, ...]

    def matches(self, labels: Labels | Mapping[str, str]) -> bool:
        """True if the series matches."""
        d = dict(labels)
        return all(m.matches(d.get(m.name, "")) for m in self.matchers)

    def __str__(self) -> str:
        return self.text


def parse_selector(text: str) -> Selector:
    """Parse a series selector; anything else (functions, ranges, offsets) is an error."""
    import promql_parser

    try:
        expr = promql_parser.parse(text)
    except (ValueError, TypeError) as e:
        raise InvalidInputError(f"invalid selector {text!r}: {e}") from None
    if type(expr).__name__ != "VectorSelector" or getattr(expr, "offset", None) or getattr(expr, "at", None):
        raise InvalidInputError(f"invalid selector {text!r}: want a series selector like up{{job=\"a\"}}")
    matchers = []
    if expr.name:
        matchers.append(Matcher(METRIC_NAME, "=", expr.name))
    if getattr(expr.matchers, "or_matchers", None):
        raise InvalidInputError(f"invalid selector {text!r}: 'or' matchers are not supported")
    for m in expr.matchers.matchers:
        op = _OPS.get(str(m.op))
        if op is None:
            raise InvalidInputError(f"invalid selector {text!r}: unknown operator {m.op}")
        if op in ("=~", "!~"):
            try:
                compile_regex(m.value)
            except InvalidInputError as e:
                raise InvalidInputError(f"invalid selector {text!r}: {e}") from None
        matchers.append(Matcher(m.name, op, m.value))
    if not any(m.op in ("=", "=~") and not m.matches("") for m in matchers):
        raise InvalidInputError(f"invalid selector {text!r}: needs at least one matcher that does not match empty")
    return Selector(text, tuple(matchers))
