"""Job leases: objects under _strata/leases/ created with put-if-absent, renewed while held.

Two compactors never work on the same job: the second sees a live lease and skips the job (its
run then exits 75 so the CronJob retries). A lease names its owner's run (`host:pid:run id`) and
expires after a short TTL unless its holder keeps renewing it (`Heartbeat`, every TTL/3), so a
killed or crashed run frees its jobs within one TTL; on the same host, a lease whose process is
gone is taken over at once. Taking over is compare-and-swap on the lease's ETag: one taker wins.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from blocks.errors import ObjectNotFound, PreconditionFailed, StrataError
from blocks.layout import RESERVED_PREFIX
from blocks.objstore import ObjectStore

HOST = socket.gethostname()


def new_owner() -> str:
    """This run's owner id: host, pid and a fresh run id."""
    return f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


@dataclass
class Lease:
    """A held lease (`etag`: the version we wrote, for renewals)."""

    key: str
    job: str
    owner: str
    expires_ms: int
    etag: str = ""


def lease_key(job_key: str) -> str:
    """Object key of the lease for a job."""
    return f"{RESERVED_PREFIX}leases/{hashlib.sha256(job_key.encode()).hexdigest()[:40]}.json"


def _body(job_key: str, owner: str, now_ms: int, ttl_ms: int) -> bytes:
    return json.dumps({"job": job_key, "owner": owner, "acquired_ms": now_ms,
                       "expires_ms": now_ms + ttl_ms}).encode()


def owner_is_dead(owner: str) -> bool:
    """True when the owner ran on this host and its process no longer exists."""
    parts = str(owner).split(":")
    if len(parts) < 2 or parts[0] != HOST or parts[1] == str(os.getpid()):
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


def acquire(store: ObjectStore, job_key: str, owner: str, now_ms: int, ttl_ms: int) -> Lease | None:
    """Take the job's lease, or None if another live owner holds it."""
    key = lease_key(job_key)
    body = _body(job_key, owner, now_ms, ttl_ms)
    try:
        etag = store.put_if_absent(key, body)
        return Lease(key, job_key, owner, now_ms + ttl_ms, etag)
    except PreconditionFailed:
        pass
    try:
        info = store.stat(key)
        current = json.loads(store.get(key))
    except (ObjectNotFound, ValueError):
        return None  # released or being rewritten right now: let the next pass decide
    if current.get("owner") == owner:  # our retried create landed
        return Lease(key, job_key, owner, int(current.get("expires_ms", 0)), info.etag)
    if int(current.get("expires_ms", 0)) > now_ms and not owner_is_dead(current.get("owner", "")):
        return None
    try:
        etag = store.put(key, body, if_match=info.etag)  # take over; one taker wins
    except PreconditionFailed:
        return None
    return Lease(key, job_key, owner, now_ms + ttl_ms, etag)


def renew(store: ObjectStore, lease: Lease, now_ms: int, ttl_ms: int) -> bool:
    """Push the expiry out; False when the lease is no longer ours (taken over after expiry)."""
    body = _body(lease.job, lease.owner, now_ms, ttl_ms)
    try:
        lease.etag = store.put(lease.key, body, if_match=lease.etag)
    except PreconditionFailed:
        try:  # a renewal whose answer was lost, then retried, still left our body there
            current = json.loads(store.get(lease.key))
        except (ObjectNotFound, ValueError):
            return False
        if current.get("owner") != lease.owner:
            return False
        lease.etag = store.stat(lease.key).etag
    lease.expires_ms = now_ms + ttl_ms
    return True


def release(store: ObjectStore, lease: Lease) -> None:
    """Drop a lease we still hold (an expired one taken over by another owner is left alone)."""
    try:
        current = json.loads(store.get(lease.key))
    except (ObjectNotFound, ValueError):
        return
    if current.get("owner") == lease.owner:
        store.delete(lease.key)


class Heartbeat:
    """Renews a lease every ttl/3 in a background thread while a job runs (a context manager)."""

    def __init__(self, store: ObjectStore, lease: Lease, ttl_ms: int) -> None:
        self.store, self.lease, self.ttl_ms = store, lease, ttl_ms
        self.lost = False
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{lease.key[-12:]}", daemon=True)

    def _run(self) -> None:
        period = max(0.05, self.ttl_ms / 3000)
        while not self._stop.wait(period):
            try:
                if not renew(self.store, self.lease, int(time.time() * 1000), self.ttl_ms):
                    self.lost = True
                    return
            except StrataError:
                self.failures += 1  # transient: the next beat tries again before the TTL runs out

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def in_shard(shard_key: str, shard: int, shards: int) -> bool:
    """Stable assignment of work to one of `shards` pods."""
    if shards <= 1:
        return True
    return int(hashlib.sha256(shard_key.encode()).hexdigest()[:16], 16) % shards == shard
