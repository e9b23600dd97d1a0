"""Where the bucket is (StoreConfig, bucket URLs) and the scheme -> backend table that builds a store stack."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from blocks.errors import InvalidInputError

from blocks.objstore.base import ObjectStore
from blocks.objstore.local import LocalDirStore
from blocks.objstore.memory import MemoryStore
from blocks.objstore.wrappers import CountingStore, RetryingStore

# ---------------------------------------------------------------------------- factory


@dataclass(frozen=True)
class StoreConfig:
    """Where the bucket is and how to reach it.

    `url`: `s3://bucket[/prefix]`, `file:///abs/path`, a plain path, or `mem://` (tests).
    S3 credentials left None fall back to boto3's standard chain (AWS_* env, profile, IRSA).
    """

    url: str
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    retry_max_attempts: int = 5
    retry_base_delay_s: float = 0.1
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0


_MEMORY_STORES: dict[str, MemoryStore] = {}


def parse_bucket_url(url: str) -> tuple[str, str, str]:
    """Split a bucket URL into (scheme, location, prefix): ('s3', bucket, prefix), ('file', path, '')."""
    if not url:
        raise InvalidInputError("empty bucket URL")
    if url.startswith("s3://"):
        rest = url[5:]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise InvalidInputError(f"invalid bucket URL {url!r}: no bucket name")
        return "s3", bucket, prefix.strip("/")
    if url.startswith("mem://"):
        return "mem", url[6:], ""
    if url.startswith("file://"):
        path = url[7:]
        if not path.startswith("/"):
            raise InvalidInputError(f"invalid bucket URL {url!r}: file:// needs an absolute path")
        return "file", path, ""
    if "://" in url:
        raise InvalidInputError(f"unsupported bucket URL scheme in {url!r} (use s3://, file:// or a path)")
    return "file", url, ""


def _s3(cfg: StoreConfig, bucket: str, prefix: str) -> ObjectStore:
    from blocks.objstore.s3 import S3Store, make_s3_client  # boto3 only when S3 is used

    return S3Store(bucket, prefix, make_s3_client(cfg))


# Scheme -> backend: a new object store (e.g. gs://) is a class with the ObjectStore methods plus
# `local_path`, a row here, and its scheme in parse_bucket_url.
BACKENDS: dict[str, Callable[[StoreConfig, str, str, bool], ObjectStore]] = {
    "s3": lambda cfg, location, prefix, create: _s3(cfg, location, prefix),
    "mem": lambda cfg, location, prefix, create: _MEMORY_STORES.setdefault(location, MemoryStore()),
    "file": lambda cfg, location, prefix, create: LocalDirStore(location, create=create),
}


def open_store(cfg: StoreConfig | str, *, create: bool = True) -> CountingStore:
    """Build the store stack for a config: Counting(Retrying(backend)). With `create=False` a
    local bucket directory must already exist (read-only commands refuse a typo'd path)."""
    if isinstance(cfg, str):
        cfg = StoreConfig(url=cfg)
    scheme, location, prefix = parse_bucket_url(cfg.url)
    backend = BACKENDS[scheme](cfg, location, prefix, create)
    return CountingStore(RetryingStore(backend, cfg.retry_max_attempts, cfg.retry_base_delay_s))
