"""The one object-store interface and its implementations: memory, local dir, S3 (boto3).

Wrappers add retries and request counting; `open_store` builds the stack from a StoreConfig.
Keys are '/'-separated, relative to the bucket root (plus any configured prefix).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, TypeVar, Union, runtime_checkable

from blocks.errors import (
    InvalidInputError,
    ObjectNotFound,
    PreconditionFailed,
    RetryableError,
    StrataError,
)

Payload = Union[bytes, Path]
T = TypeVar("T")


@dataclass(frozen=True)
class ObjectInfo:
    """What `stat` knows about one object."""

    key: str
    size: int
    etag: str
    last_modified_ms: int


@runtime_checkable
class ObjectStore(Protocol):
    """Minimal object-store interface every Strata package talks to."""

    def get(self, key: str) -> bytes:
        """Whole object; raises ObjectNotFound."""

    def local_path(self, key: str) -> "Path | None":
        """The object as a local file readers may open in place, or None (no request either way)."""

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """`length` bytes from `offset` (shorter at the end); raises ObjectNotFound."""

    def put(self, key: str, data: Payload, *, if_match: str | None = None) -> str:
        """Write (replace) an object, returning its etag; `if_match` makes it compare-and-swap."""

    def put_if_absent(self, key: str, data: Payload) -> str:
        """Create an object only if missing; raises PreconditionFailed otherwise."""

    def exists(self, key: str) -> bool:
        """True if the key exists."""

    def delete(self, key: str) -> None:
        """Remove an object; deleting a missing key is not an error."""

    def list(self, prefix: str = "", *, recursive: bool = True) -> list[str]:
        """Sorted keys under `prefix`; non-recursive lists also return 'dir/' prefixes."""

    def stat(self, key: str) -> ObjectInfo:
        """Size, etag and mtime of an object; raises ObjectNotFound."""


def _payload_bytes(data: Payload) -> bytes:
    return data.read_bytes() if isinstance(data, Path) else bytes(data)


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or "//" in key or any(p in (".", "..") for p in key.split("/")):
        raise InvalidInputError(f"invalid object key {key!r}")
    return key


def _children(keys: list[str], prefix: str) -> list[str]:
    out: set[str] = set()
    for k in keys:
        rest = k[len(prefix):]
        out.add(prefix + rest.split("/", 1)[0] + "/" if "/" in rest else k)
    return sorted(out)


# ---------------------------------------------------------------------------- memory


class MemoryStore:
    """In-memory store for unit tests; thread-safe."""

    def __init__(self) -> None:
        self._objects: dict[str, tuple[bytes, str, int]] = {}
        self._lock = threading.Lock()
        self._gen = 0

    def _info(self, key: str) -> tuple[bytes, str, int]:
        try:
            return self._objects[key]
        except KeyError:
            raise ObjectNotFound(key) from None

    def local_path(self, key: str) -> Path | None:
        """Capability: objects here are not local files."""
        return None

    def get(self, key: str) -> bytes:
        with self._lock:
            return self._info(_check_key(key))[0]

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        return self.get(key)[offset : offset + length]

    def _write(self, key: str, data: Payload) -> str:
        self._gen += 1
        body = _payload_bytes(data)
        etag = f"{hashlib.md5(body).hexdigest()}-{self._gen}"
        self._objects[key] = (body, etag, int(time.time() * 1000))
        return etag

    def put(self, key: str, data: Payload, *, if_match: str | None = None) -> str:
        with self._lock:
            _check_key(key)
            if if_match is not None and (key not in self._objects or self._objects[key][1] != if_match):
                raise PreconditionFailed(key)
            return self._write(key, data)

    def put_if_absent(self, key: str, data: Payload) -> str:
        with self._lock:
            if _check_key(key) in self._objects:
                raise PreconditionFailed(key)
            return self._write(key, data)

    def exists(self, key: str) -> bool:
        with self._lock:
            return _check_key(key) in self._objects

    def delete(self, key: str) -> None:
        with self._lock:
            self._objects.pop(_check_key(key), None)

    def list(self, prefix: str = "", *, recursive: bool = True) -> list[str]:
        with self._lock:
            keys = sorted(k for k in self._objects if k.startswith(prefix))
        return keys if recursive else _children(keys, prefix)

    def stat(self, key: str) -> ObjectInfo:
        with self._lock:
            body, etag, mtime = self._info(_check_key(key))
        return ObjectInfo(key, len(body), etag, mtime)


# ---------------------------------------------------------------------------- local dir


class LocalDirStore:
    """A directory on local disk as a bucket: atomic writes via temp file + rename/link."""

    _TMP_SUFFIX = ".strata-tmp"

    def __init__(self, root: str | Path, *, create: bool = True) -> None:
        self.root = Path(root).resolve()
        if not create and not self.root.is_dir():
            what = "is not a directory" if self.root.exists() else "does not exist"
            raise InvalidInputError(f"bucket {self.root} {what} (a typo? only import, receive and retention "
                                    "set/import/rule create a local bucket)")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise InvalidInputError(f"bucket {self.root} is a file, not a directory") from None
        self._cas_lock = threading.Lock()

    def path(self, key: str) -> Path:
        """Local file path of a key (DuckDB and pyarrow may read it directly)."""
        return self.root / _check_key(key)

    def local_path(self, key: str) -> Path | None:
        """Capability: the file itself, so readers open it in place."""
        return self.path(key)

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        try:
            with open(self.path(key), "rb") as f:
                f.seek(offset)
                return f.read(length)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None

    def _stage(self, key: str, data: Payload) -> Path:
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".", suffix=self._TMP_SUFFIX)
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, Path):
                with open(data, "rb") as src:
                    shutil.copyfileobj(src, f, 1 << 20)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return Path(tmp)

    @staticmethod
    def _etag(st: os.stat_result) -> str:
        return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"

    def put(self, key: str, data: Payload, *, if_match: str | None = None) -> str:
        tmp = self._stage(key, data)
        dest = self.path(key)
        try:
            with self._cas_lock:
                if if_match is not None:
                    try:
                        current = self._etag(dest.stat())
                    except FileNotFoundError:
                        raise PreconditionFailed(key) from None
                    if current != if_match:
                        raise PreconditionFailed(key)
                os.replace(tmp, dest)
                return self._etag(dest.stat())
        finally:
            tmp.unlink(missing_ok=True)

    def put_if_absent(self, key: str, data: Payload) -> str:
        tmp = self._stage(key, data)
        dest = self.path(key)
        try:
            os.link(tmp, dest)  # atomic: fails if dest exists
        except FileExistsError:
            raise PreconditionFailed(key) from None
        finally:
            tmp.unlink(missing_ok=True)
        return self._etag(dest.stat())

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        p = self.path(key)
        p.unlink(missing_ok=True)
        # Remove now-empty parent directories up to the root, like an object store would.
        parent = p.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def list(self, prefix: str = "", *, recursive: bool = True) -> list[str]:
        keys = []
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.endswith(self._TMP_SUFFIX):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, name), self.root).replace(os.sep, "/")
                if rel.startswith(prefix):
                    keys.append(rel)
        keys.sort()
        return keys if recursive else _children(keys, prefix)

    def stat(self, key: str) -> ObjectInfo:
        try:
            st = self.path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(key) from None
        if not self.path(key).is_file():
            raise ObjectNotFound(key)
        return ObjectInfo(key, st.st_size, self._etag(st), st.st_mtime_ns // 1_000_000)


# ---------------------------------------------------------------------------- S3


_RETRYABLE_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
    "InternalError", "ServiceUnavailable", "503", "500", "502", "504", "OperationAborted",
}


def classify_s3_error(action: str, key: str, e: BaseException) -> StrataError:
    """Every exception a boto3 call (or reading its response body) can raise, as the error family
    that decides what happens next: ObjectNotFound, PreconditionFailed, RetryableError
    (throttling, 5xx, connection resets, timeouts, truncated bodies: try again) or a permanent
    StrataError (credentials, bad requests, 4xx: do not retry)."""
    import botocore.exceptions as bexc

    if isinstance(e, bexc.ClientError):
        resp = getattr(e, "response", None) or {}
        code = str((resp.get("Error") or {}).get("Code", ""))
        status = int((resp.get("ResponseMetadata") or {}).get("HTTPStatusCode", 0) or 0)
        if code in ("NoSuchKey", "404", "NotFound"):
            return ObjectNotFound(key)
        if code in ("PreconditionFailed", "412", "ConditionalRequestConflict") or status in (409, 412):
            return PreconditionFailed(key)
        if code in _RETRYABLE_CODES or status >= 500 or status == 429 or status == 0:
            return RetryableError(f"{action} {key}: S3 {code or status or 'no status'}")
        return StrataError(f"{action} {key}: S3 {code or status}: {e}")
    permanent = (bexc.NoCredentialsError, bexc.PartialCredentialsError, bexc.ParamValidationError,
                 bexc.NoRegionError, bexc.UnknownServiceError)
    if isinstance(e, permanent):
        return StrataError(f"{action} {key}: {e}")
    try:
        import urllib3.exceptions as u3
        transient_u3: tuple = (u3.HTTPError,)
    except ImportError:  # pragma: no cover
        transient_u3 = ()
    # Connection refused/reset/closed, timeouts, a body cut short (ResponseStreamingError,
    # IncompleteReadError), a proxy or TLS hiccup: all BotoCoreError or urllib3/OS errors.
    if isinstance(e, (bexc.BotoCoreError, ConnectionError, TimeoutError, OSError) + transient_u3):
        return RetryableError(f"{action} {key}: {type(e).__name__}: {e}")
    return StrataError(f"{action} {key}: unexpected {type(e).__name__}: {e}")


class S3Store:
    """S3 (or any S3-compatible server) through boto3; `prefix` scopes every key."""

    def __init__(self, bucket: str, prefix: str = "", client=None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client

    def _k(self, key: str) -> str:
        return self.prefix + _check_key(key)

    def _call(self, action: str, key: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except StrataError:
            raise
        except Exception as e:
            raise classify_s3_error(action, key, e) from e

    def local_path(self, key: str) -> Path | None:
        """Capability: objects here are not local files."""
        return None

    def get(self, key: str) -> bytes:
        return self._call("get", key, lambda: self.client.get_object(
            Bucket=self.bucket, Key=self._k(key))["Body"].read())

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        rng = f"bytes={offset}-{offset + length - 1}"

        def fn() -> bytes:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self._k(key), Range=rng)["Body"].read()
            except Exception as e:  # an unsatisfiable range past the end is an empty read
                if ((getattr(e, "response", None) or {}).get("Error") or {}).get("Code") == "InvalidRange":
                    return b""
                raise

        return self._call("get_range", key, fn)

    def put(self, key: str, data: Payload, *, if_match: str | None = None) -> str:
        extra = {"IfMatch": if_match} if if_match is not None else {}
        if isinstance(data, Path) and data.stat().st_size > 64 << 20 and not extra:
            def upload() -> str:
                self.client.upload_file(str(data), self.bucket, self._k(key))
                return self.client.head_object(Bucket=self.bucket, Key=self._k(key))["ETag"]
            return self._call("put", key, upload)
        body = _payload_bytes(data)
        try:
            return self._call("put", key, lambda: self.client.put_object(
                Bucket=self.bucket, Key=self._k(key), Body=body, **extra)["ETag"])
        except ObjectNotFound:
            raise PreconditionFailed(key) from None  # S3 answers If-Match on a missing key with 404

    def put_if_absent(self, key: str, data: Payload) -> str:
        body = _payload_bytes(data)
        return self._call("put_if_absent", key, lambda: self.client.put_object(
            Bucket=self.bucket, Key=self._k(key), Body=body, IfNoneMatch="*")["ETag"])

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
            return True
        except ObjectNotFound:
            return False

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=self._k(key)))

    def list(self, prefix: str = "", *, recursive: bool = True) -> list[str]:
        def fn() -> list[str]:
            out: list[str] = []
            kwargs = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
            if not recursive:
                kwargs["Delimiter"] = "/"
            for page in self.client.get_paginator("list_objects_v2").paginate(**kwargs):
                out.extend(o["Key"][len(self.prefix):] for o in page.get("Contents", []))
                out.extend(p["Prefix"][len(self.prefix):] for p in page.get("CommonPrefixes", []))
            return sorted(out)

        return self._call("list", prefix, fn)

    def stat(self, key: str) -> ObjectInfo:
        def fn() -> ObjectInfo:
            h = self.client.head_object(Bucket=self.bucket, Key=self._k(key))
            return ObjectInfo(key, int(h["ContentLength"]), h["ETag"],
                              int(h["LastModified"].timestamp() * 1000))

        return self._call("stat", key, fn)


# ---------------------------------------------------------------------------- wrappers


class RetryingStore:
    """Retries RetryableError with exponential backoff and full jitter."""

    def __init__(self, inner: ObjectStore, max_attempts: int = 5, base_delay_s: float = 0.1,
                 max_delay_s: float = 5.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.inner = inner
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self._sleep = sleep

    def _retry(self, fn: Callable[[], T]) -> T:
        for attempt in range(1, self.max_attempts + 1):
            try:
                return fn()
            except RetryableError:
                if attempt == self.max_attempts:
                    raise
                self._sleep(random.uniform(0, min(self.max_delay_s, self.base_delay_s * 2 ** attempt)))
        raise AssertionError("unreachable")

    def local_path(self, key: str) -> Path | None:
        """The wrapped store's local file of a key (no request)."""
        return self.inner.local_path(key)

    def get(self, key: str) -> bytes:
        return self._retry(lambda: self.inner.get(key))

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        return self._retry(lambda: self.inner.get_range(key, offset, length))

    def put(self, key: str, data: Payload, *, if_match: str | None = None) -> str:
        return self._retry(lambda: self.inner.put(key, data, if_match=if_match))

    def put_if_absent(self, key: str, data: Payload) -> str:
        # A retried put-if-absent whose first attempt landed reports PreconditionFailed; callers
        # that need certainty (leases) re-read the object and compare its content.
        return self._retry(lambda: self.inner.put_if_absent(key, data))

    def exists(self, key: str) -> bool:
        return self._retry(lambda: self.inner.exists(key))

    def delete(self, key: str) -> None:
        self._retry(lambda: self.inner.delete(key))

    def list(self, prefix: str = "", *, recursive: bool = True) -> list[str]:
        return self._retry(lambda: self.inner.list(prefix, recursive=recursive))

    def stat(self, key: str) -> ObjectInfo:
        return self._retry(lambda: self.inner.stat(key))


@dataclass
class RequestCounts:
    """Object-store requests by kind and bytes moved; object-store cost is request count."""

    requests: Counter = field(default_factory=Counter)
    bytes_read: int = 0
    bytes_written: int = 0

    def as_dict(self) -> dict:
        return {"requests": dict(sorted(self.requests.items())), "bytes_read": self.bytes_read,
                "bytes_written": self.bytes_written}


class CountingStore:
    """Counts requests by kind (one per call that reaches the wrapped store) and bytes moved."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.counts = RequestCounts()
        self._lock = threading.Lock()

    def _n(self, kind: str, read: int = 0, written: int = 0) -> None:
        with self._lock:
            self.counts.requests[kind] += 1
            self.counts.bytes_read += read
            self.counts.bytes_written += written

    def local_path(self, key: str) -> Path | None:
        """The wrapped store's local file of a key (no request)."""
        return self.inner.local_path(key)

    def get(self, key: str) -> bytes:
        self._n("get")
        data = self.inner.get(key)
        self._add_read(len(data))
        return data

    def _add_read(self, n: int) -> None:
        with self._lock:
            self.counts.bytes_read += n

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        self._n("get_range")
        data = self.inner.get_range(key, offset, length)
        self._add_read(len(data))
        return data

    def put(self, key: str, data: Payload, *, if_match: str | None = None) -> str:
        size = data.stat().st_size if isinstance(data, Path) else len(data)
        self._n("put", written=size)
        return self.inner.put(key, data, if_match=if_match)

    def put_if_absent(self, key: str, data: Payload) -> str:
        size = data.stat().st_size if isinstance(data, Path) else len(data)
        self._n("put_if_absent", written=size)
        return self.inner.put_if_absent(key, data)

    def exists(self, key: str) -> bool:
        self._n("exists")
        return self.inner.exists(key)

    def delete(self, key: str) -> None:
        self._n("delete")
        self.inner.delete(key)

    def list(self, prefix: str = "", *, recursive: bool = True) -> list[str]:
        self._n("list")
        return self.inner.list(prefix, recursive=recursive)

    def stat(self, key: str) -> ObjectInfo:
        self._n("stat")
        return self.inner.stat(key)



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


def make_s3_client(cfg: StoreConfig):
    """A boto3 S3 client from config; our RetryingStore owns retries, so botocore's are minimal."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(
        aws_access_key_id=cfg.access_key_id, aws_secret_access_key=cfg.secret_access_key,
        aws_session_token=cfg.session_token, region_name=cfg.region or None)
    return session.client(
        "s3", endpoint_url=cfg.endpoint_url,
        config=Config(retries={"max_attempts": 1, "mode": "standard"},
                      connect_timeout=cfg.connect_timeout_s, read_timeout=cfg.read_timeout_s,
                      s3={"addressing_style": "path"} if cfg.endpoint_url else None),
    )


# Scheme -> backend: a new object store (e.g. gs://) is a class with the ObjectStore methods plus
# `local_path`, a row here, and its scheme in parse_bucket_url.
BACKENDS: dict[str, Callable[[StoreConfig, str, str, bool], ObjectStore]] = {
    "s3": lambda cfg, location, prefix, create: S3Store(location, prefix, make_s3_client(cfg)),
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
