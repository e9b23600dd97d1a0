"""S3 through boto3: the store, its error classification, and the client from a StoreConfig."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from blocks.errors import ObjectNotFound, PreconditionFailed, RetryableError, StrataError

from blocks.objstore.base import Payload, ObjectInfo, T, _check_key, _payload_bytes
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from blocks.objstore.config import StoreConfig

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
