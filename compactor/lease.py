"""Group leases: objects under _strata/leases/ created with put-if-absent, with an expiry.

Two compactors never work on the same job: the second sees the lease and skips. An expired
lease (its holder died) is taken over with compare-and-swap, so only one taker wins.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from blocks.errors import ObjectNotFound, PreconditionFailed
from blocks.layout import RESERVED_PREFIX
from blocks.objstore import ObjectStore


@dataclass(frozen=True)
class Lease:
    """A held lease."""

    key: str
    job: str
    owner: str
    expires_ms: int


def lease_key(job_key: str) -> str:
    """Object key of the lease for a job."""
    return f"{RESERVED_PREFIX}leases/{hashlib.sha256(job_key.encode()).hexdigest()[:40]}.json"


def _body(job_key: str, owner: str, now_ms: int, ttl_ms: int) -> bytes:
    return json.dumps({"job": job_key, "owner": owner, "acquired_ms": now_ms,
                       "expires_ms": now_ms + ttl_ms}).encode()


def acquire(store: ObjectStore, job_key: str, owner: str, now_ms: int, ttl_ms: int) -> Lease | None:
    """Take the job's lease, or None if another live owner holds it."""
    key = lease_key(job_key)
    body = _body(job_key, owner, now_ms, ttl_ms)
    try:
        store.put_if_absent(key, body)
        return Lease(key, job_key, owner, now_ms + ttl_ms)
    except PreconditionFailed:
        pass
    try:
        info = store.stat(key)
        current = json.loads(store.get(key))
    except (ObjectNotFound, ValueError):
        return None  # released or being rewritten right now: let the next pass decide
    if current.get("owner") == owner:
        return Lease(key, job_key, owner, int(current.get("expires_ms", 0)))  # our retried create landed
    if int(current.get("expires_ms", 0)) > now_ms:
        return None
    try:
        store.put(key, body, if_match=info.etag)  # take over an expired lease; one taker wins
    except PreconditionFailed:
        return None
    return Lease(key, job_key, owner, now_ms + ttl_ms)


def release(store: ObjectStore, lease: Lease) -> None:
    """Drop a lease we still hold (an expired one taken over by another owner is left alone)."""
    try:
        current = json.loads(store.get(lease.key))
    except (ObjectNotFound, ValueError):
        return
    if current.get("owner") == lease.owner:
        store.delete(lease.key)


def in_shard(shard_key: str, shard: int, shards: int) -> bool:
    """Stable assignment of work to one of `shards` pods."""
    if shards <= 1:
        return True
    return int(hashlib.sha256(shard_key.encode()).hexdigest()[:16], 16) % shards == shard
