"""One contract suite for every object-store backend, plus the wrappers and the factory."""

from __future__ import annotations

from pathlib import Path

import pytest

from blocks.errors import InvalidInputError, ObjectNotFound, PreconditionFailed, RetryableError
from blocks.objstore import (
    CountingStore, LocalDirStore, MemoryStore, RetryingStore, S3Store, StoreConfig, make_s3_client,
    open_store, parse_bucket_url,
)

pytestmark = pytest.mark.integration


def test_put_get_roundtrip(any_store):
    any_store.put("t/a/file.bin", b"hello world")
    assert any_store.get("t/a/file.bin") == b"hello world"
    assert any_store.get_range("t/a/file.bin", 6, 5) == b"world"
    assert any_store.get_range("t/a/file.bin", 6, 100) == b"world"
    assert any_store.stat("t/a/file.bin").size == 11


def test_put_from_path(any_store, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 100_000)
    any_store.put("k/big", src)
    assert any_store.get("k/big") == b"x" * 100_000


def test_missing_objects_raise_not_found(any_store):
    with pytest.raises(ObjectNotFound):
        any_store.get("nope/x")
    with pytest.raises(ObjectNotFound):
        any_store.get_range("nope/x", 0, 1)
    with pytest.raises(ObjectNotFound):
        any_store.stat("nope/x")
    assert not any_store.exists("nope/x")
    any_store.delete("nope/x")  # deleting a missing key is fine


def test_put_if_absent(any_store):
    any_store.put_if_absent("lease/g1", b"a")
    with pytest.raises(PreconditionFailed):
        any_store.put_if_absent("lease/g1", b"b")
    assert any_store.get("lease/g1") == b"a"


def test_compare_and_swap(any_store):
    etag = any_store.put("_strata/policy.json", b"v1")
    assert any_store.stat("_strata/policy.json").etag == etag
    new = any_store.put("_strata/policy.json", b"v2", if_match=etag)
    with pytest.raises(PreconditionFailed):
        any_store.put("_strata/policy.json", b"v3", if_match=etag)  # stale etag loses
    assert any_store.get("_strata/policy.json") == b"v2"
    any_store.put("_strata/policy.json", b"v3", if_match=new)
    assert any_store.get("_strata/policy.json") == b"v3"
    with pytest.raises(PreconditionFailed):
        any_store.put("_strata/absent.json", b"x", if_match=new)


def test_list_and_delete(any_store):
    for k in ["t1/A/meta.json", "t1/A/samples.parquet", "t1/B/meta.json", "t2/C/x", "_strata/p"]:
        any_store.put(k, b"1")
    assert any_store.list("t1/") == ["t1/A/meta.json", "t1/A/samples.parquet", "t1/B/meta.json"]
    assert any_store.list("t1/", recursive=False) == ["t1/A/", "t1/B/"]
    assert any_store.list("", recursive=False) == ["_strata/", "t1/", "t2/"]
    any_store.delete("t1/A/meta.json")
    assert any_store.list("t1/A/") == ["t1/A/samples.parquet"]
    assert any_store.list("zzz/") == []


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/../b", "./a"])
def test_invalid_keys_rejected(any_store, key):
    with pytest.raises(InvalidInputError):
        any_store.put(key, b"x")


def test_counting_wrapper_counts_by_kind(any_store):
    any_store.put("a/b", b"123")
    any_store.get("a/b")
    any_store.get_range("a/b", 0, 1)
    any_store.list("a/")
    any_store.exists("a/b")
    c = any_store.counts.as_dict()
    assert c["requests"] == {"exists": 1, "get": 1, "get_range": 1, "list": 1, "put": 1}
    assert c["bytes_written"] == 3 and c["bytes_read"] == 4


class Flaky(MemoryStore):
    """Fails the first `failures` gets with a transient error."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.calls = 0

    def get(self, key: str) -> bytes:
        self.calls += 1
        if self.calls <= self.failures:
            raise RetryableError("503 SlowDown")
        return super().get(key)


def test_retry_recovers_from_transient_errors():
    inner = Flaky(failures=3)
    inner.put("k", b"v")
    store = RetryingStore(inner, max_attempts=5, sleep=lambda s: None)
    assert store.get("k") == b"v"
    assert inner.calls == 4


def test_retry_gives_up_after_max_attempts():
    inner = Flaky(failures=10)
    inner.put("k", b"v")
    store = RetryingStore(inner, max_attempts=3, sleep=lambda s: None)
    with pytest.raises(RetryableError):
        store.get("k")
    assert inner.calls == 3


def test_retry_does_not_retry_not_found():
    calls = []

    class Counting(MemoryStore):
        def get(self, key):
            calls.append(key)
            return super().get(key)

    with pytest.raises(ObjectNotFound):
        RetryingStore(Counting(), sleep=lambda s: None).get("missing")
    assert len(calls) == 1


def test_s3_unreachable_endpoint_is_retryable():
    cfg = StoreConfig(url="s3://b", endpoint_url="http://127.0.0.1:9", region="us-east-1",
                      access_key_id="x", secret_access_key="y", connect_timeout_s=0.5)
    store = S3Store("b", "", make_s3_client(cfg))
    with pytest.raises(RetryableError):
        store.get("k")


def test_s3_prefix_scopes_keys(s3_bucket):
    client = make_s3_client(s3_bucket)
    bucket = s3_bucket.url[5:]
    store = S3Store(bucket, "team/strata", client)
    store.put("t/x", b"1")
    assert client.get_object(Bucket=bucket, Key="team/strata/t/x")["Body"].read() == b"1"
    assert store.list("") == ["t/x"]


def test_open_store_through_factory(s3_bucket, tmp_path):
    s3 = open_store(s3_bucket)
    s3.put("a/b", b"s3")
    assert s3.get("a/b") == b"s3"
    local = open_store(str(tmp_path / "b"))
    local.put("a/b", b"local")
    assert (tmp_path / "b" / "a" / "b").read_bytes() == b"local"
    assert isinstance(open_store(f"file://{tmp_path}/c"), CountingStore)


@pytest.mark.parametrize("url,expected", [
    ("s3://bkt", ("s3", "bkt", "")),
    ("s3://bkt/some/prefix/", ("s3", "bkt", "some/prefix")),
    ("file:///tmp/x", ("file", "/tmp/x", "")),
    ("./data", ("file", "./data", "")),
], ids=["s3", "s3-prefix", "file-url", "plain-path"])
def test_parse_bucket_url(url, expected):
    assert parse_bucket_url(url) == expected


@pytest.mark.parametrize("url", ["", "gs://x", "s3://", "file://relative"])
def test_parse_bucket_url_rejects(url):
    with pytest.raises(InvalidInputError):
        parse_bucket_url(url)


def test_local_store_leaves_no_temp_files(tmp_path):
    store = LocalDirStore(tmp_path)
    store.put("a/b", b"1")
    with pytest.raises(PreconditionFailed):
        store.put_if_absent("a/b", b"2")
    assert sorted(p.name for p in Path(tmp_path, "a").iterdir()) == ["b"]
