"""PromQL series selectors (`{__name__=~"go_.*"}`, `up{job="a"}`) parsed with promql-parser
and matched against label sets with Prometheus semantics (anchored regexes; a missing label
matches as the empty string)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

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
        hit = _regex(self.value).fullmatch(value) is not None
        return hit if self.op == "=~" else not hit


_CACHE: dict[str, re.Pattern] = {}


def _regex(text: str) -> re.Pattern:
    if text not in _CACHE:
        _CACHE[text] = re.compile(text, re.DOTALL)
    return _CACHE[text]


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
                _regex(m.value)
            except re.error as e:
                raise InvalidInputError(f"invalid selector {text!r}: bad regex {m.value!r}: {e}") from None
        matchers.append(Matcher(m.name, op, m.value))
    if not any(m.op in ("=", "=~") and not m.matches("") for m in matchers):
        raise InvalidInputError(f"invalid selector {text!r}: needs at least one matcher that does not match empty")
    return Selector(text, tuple(matchers))
