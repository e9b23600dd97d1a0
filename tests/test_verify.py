"""`verify` finds flipped bytes, missing meta.json, and metas that disagree with their files."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from blocks.layout import META_FILE, SAMPLES_FILE, SERIES_FILE, block_file_key, meta_key
from blocks.objstore import LocalDirStore, open_store
from blocks.verify import verify_bucket
from tests.factories import make_block


@pytest.fixture
def store(tmp_path):
    return open_store(str(tmp_path / "bucket"))


def flip(store, key: str, offset: int) -> None:
    data = bytearray(store.get(key))
    data[offset % len(data)] ^= 0x01
    store.put(key, bytes(data))


def test_clean_bucket_verifies(store):
    make_block(store)
    make_block(store, tenant="t2")
    report = verify_bucket(store)
    assert report.ok and report.checked == 2


@pytest.mark.parametrize("name", [SAMPLES_FILE, SERIES_FILE])
@pytest.mark.parametrize("where", [0, 0.5, -1], ids=["first", "middle", "last"])
def test_flipped_byte_in_data_file_detected(store, name, where):
    meta, _, _ = make_block(store)
    key = block_file_key("t1", meta.ulid, name)
    size = store.stat(key).size
    flip(store, key, int(size * where) if where != -1 else size - 1)
    report = verify_bucket(store)
    assert any("sha256" in p for p in report.problems[("t1", meta.ulid)])


@pytest.mark.parametrize("offset", [5, 40, 200])
def test_flipped_byte_in_meta_detected(store, offset):
    meta, _, _ = make_block(store)
    flip(store, meta_key("t1", meta.ulid), offset)
    assert not verify_bucket(store).ok


def test_missing_meta_detected(store):
    meta, _, _ = make_block(store)
    store.delete(meta_key("t1", meta.ulid))
    report = verify_bucket(store)
    assert "no meta.json" in report.problems[("t1", meta.ulid)][0]


@pytest.mark.parametrize("edit,expect", [
    (lambda d: d["stats"].__setitem__("rows", d["stats"]["rows"] + 1), "rows"),
    (lambda d: d["stats"].__setitem__("series", 99), "series"),
    (lambda d: d["files"][0].__setitem__("size_bytes", d["files"][0]["size_bytes"] + 1), "bytes"),
    (lambda d: d["files"][0].__setitem__("sha256", "0" * 64), "sha256"),
    (lambda d: d.__setitem__("files", d["files"][:1]), "lists no"),
    (lambda d: d.__setitem__("max_time", d["min_time"] + 1000), "outside"),
    (lambda d: d.__setitem__("ulid", "01ARZ3NDEKTSV4RRFFQ69G5FAV"), "does not match"),
    (lambda d: d.__setitem__("version", 99), "version"),
], ids=["rows", "series", "size", "sha", "missing-file", "range", "ulid", "version"])
def test_meta_that_disagrees_with_files_detected(store, edit, expect):
    meta, _, _ = make_block(store)
    doc = json.loads(store.get(meta_key("t1", meta.ulid)))
    edit(doc)
    store.put(meta_key("t1", meta.ulid), json.dumps(doc).encode())
    problems = verify_bucket(store).problems[("t1", meta.ulid)]
    assert any(expect in p for p in problems), problems


def test_unlisted_file_detected(store):
    meta, _, _ = make_block(store)
    store.put(block_file_key("t1", meta.ulid, "extra.parquet"), b"x")
    assert "not listed" in verify_bucket(store).problems[("t1", meta.ulid)][0]


def rewrite_samples(store, tmp_path, meta, change) -> None:
    """Replace a block's samples.parquet by change(table) and fix meta's size and sha256 to match."""
    import hashlib

    import pyarrow.parquet as pq

    local = LocalDirStore(tmp_path / "bucket")
    path = local.path(block_file_key(meta.tenant, meta.ulid, SAMPLES_FILE))
    pq.write_table(change(pq.read_table(path)), path)
    doc = json.loads(store.get(meta_key(meta.tenant, meta.ulid)))
    for f in doc["files"]:
        if f["name"] == SAMPLES_FILE:
            f["size_bytes"] = path.stat().st_size
            f["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    doc["stats"]["bytes"] = sum(f["size_bytes"] for f in doc["files"])
    store.put(meta_key(meta.tenant, meta.ulid), json.dumps(doc).encode())


def test_consistent_but_unsorted_block_detected(store, tmp_path):
    """A block rewritten with valid checksums but unsorted samples fails the deep check."""
    meta, _, _ = make_block(store)
    rewrite_samples(store, tmp_path, meta, lambda t: t.take(list(reversed(range(t.num_rows)))))
    problems = verify_bucket(store).problems[("t1", meta.ulid)]
    assert any("sorted" in p for p in problems), problems
    assert META_FILE  # layout constant used by the checks above


def _tier_block(store, res):
    from blocks.meta import Resolution
    from blocks.reader import load_listing
    from compactor.nightly import run_once

    make_block(store, min_time=0, max_time=86_400_000, step_ms=60_000)
    run_once(store, 86_400_000 + 7_200_000)
    assert verify_bucket(store).ok
    return next(m for m in load_listing(store, "t1").metas if m.resolution == Resolution(res))


@pytest.mark.parametrize("change,expect", [
    (lambda t: t.set_column(t.schema.get_field_index("below_m"), "below_m",
                            pa.array([-5] * t.num_rows, pa.int64())), "min/max do not bound"),
    (lambda t: t.set_column(t.schema.get_field_index("last_offset"), "last_offset",
                            pa.array([400_000] * t.num_rows, pa.int32())), "outside their window"),
    (lambda t: t.set_column(t.schema.get_field_index("count"), "count",
                            pa.array([7] * t.num_rows, pa.uint32())), "windows count"),
    (lambda t: t.drop_columns(["reset_m"]), "lacks columns ['reset_m']"),
    (lambda t: t.append_column("extra", pa.array([1] * t.num_rows)), "tier format v2 does not"),
], ids=["min-above-first", "last-ts-outside", "count-vs-meta", "missing-column", "extra-column"])
def test_inconsistent_tier_windows_detected(store, tmp_path, change, expect):
    """A tier block rewritten with valid checksums but windows that contradict themselves or meta."""
    meta = _tier_block(store, 300_000)
    rewrite_samples(store, tmp_path, meta, change)
    problems = verify_bucket(store).problems[("t1", meta.ulid)]
    assert any(expect in p for p in problems), problems


def test_golden_v1_tiers_still_verify():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "blocks" / "testdata" / "golden-tiers-v1"
    report = verify_bucket(open_store(str(root)))
    assert report.ok and report.checked == 4, report.problems
