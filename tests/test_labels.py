"""Label parsing, canonical order, and the stable series hash."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blocks.errors import HashCollisionError, InvalidInputError
from blocks.labels import canonical_labels, format_series, parse_series, series_hash, series_sort_key
from blocks import series as series_mod


@pytest.mark.parametrize("text,want", [
    ("up", (("__name__", "up"),)),
    ('up{job="a"}', (("__name__", "up"), ("job", "a"))),
    ('up{ job = "a" , b="x" }', (("__name__", "up"), ("b", "x"), ("job", "a"))),
    ('{__name__="up",job="a"}', (("__name__", "up"), ("job", "a"))),
    (r'm{v="a\"b\\c\nd"}', (("__name__", "m"), ("v", 'a"b\\c\nd'))),
    ('m{v="}{,= "}', (("__name__", "m"), ("v", "}{,= "))),
    ('m{empty=""}', (("__name__", "m"),)),
    ('m{a="1",}', (("__name__", "m"), ("a", "1"))),
], ids=["bare", "one", "spaces", "name-label", "escapes", "punct", "empty-dropped", "trailing-comma"])
def test_parse_series(text, want):
    assert parse_series(text) == want


@pytest.mark.parametrize("text", [
    'm{a="1",a="2"}', 'm{1a="x"}', 'm{a=x}', 'm{a="x}', '{job="a"}', 'm{a="\\q"}',
    'm{__name__="x"}', 'm{a="1"} trailing',
], ids=["dup", "bad-name", "unquoted", "unterminated", "no-name", "bad-escape", "name-twice", "trailing"])
def test_parse_series_rejects(text):
    with pytest.raises(InvalidInputError):
        parse_series(text)


def test_hash_is_stable_golden():
    # Changing this value changes every block's series_hash: that is a format change.
    # FORMAT.md: blake2b-64 over (u32le len, name, u32le len, value) per pair in name order,
    # digest read little-endian. Built by hand here as the oracle.
    raw = (b"\x08\x00\x00\x00__name__\x02\x00\x00\x00up"
           b"\x08\x00\x00\x00instance\x06\x00\x00\x00a:9100"
           b"\x03\x00\x00\x00job\x04\x00\x00\x00node")
    want = int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")
    assert series_hash(parse_series('up{instance="a:9100",job="node"}')) == want == 7565473732059496843


def test_hash_ignores_label_order():
    a = canonical_labels({"__name__": "m", "a": "1", "b": "2"})
    b = canonical_labels([("b", "2"), ("__name__", "m"), ("a", "1")])
    assert series_hash(a) == series_hash(b)


label_values = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=8)
label_sets = st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,5}", fullmatch=True).filter(lambda s: s != "__name__"),
                             label_values, max_size=4)


@given(label_sets, label_values.filter(lambda s: True))
def test_format_parse_roundtrip(labels, _):
    canon = canonical_labels({"__name__": "metric_x", **labels})
    assert parse_series(format_series(canon)) == canon


@given(label_sets, label_sets)
def test_distinct_label_sets_get_distinct_hashes(a, b):
    la = canonical_labels({"__name__": "m", **a})
    lb = canonical_labels({"__name__": "m", **b})
    if la != lb:
        assert series_hash(la) != series_hash(lb)


def test_collision_is_detected_not_merged(monkeypatch):
    monkeypatch.setattr(series_mod, "series_hash", lambda labels: 42)
    s = sorted([parse_series('m{a="1"}'), parse_series('m{a="2"}')], key=series_sort_key)
    with pytest.raises(HashCollisionError):
        series_mod.build_series_table(s, ["gauge", "gauge"])


def test_label_named_like_a_fixed_column_is_escaped():
    s = [parse_series('m{metric_type="x",series_ref="7"}')]
    t = series_mod.build_series_table(s, ["gauge"])
    assert "label:metric_type" in t.column_names and "label:series_ref" in t.column_names
    assert series_mod.series_labels(t) == s
