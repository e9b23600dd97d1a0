"""Strata's exception tree: one root, two families that decide what a caller does next."""

from __future__ import annotations

from dataclasses import dataclass


class StrataError(Exception):
    """Root of every error Strata raises on purpose."""


class InvalidInputError(StrataError):
    """Input from a user (file, flag, request, policy) is malformed; nothing was written."""


class HaltError(StrataError):
    """An integrity problem (overlap, corrupt meta, checksum mismatch): stop, do not retry, alert."""

    def __init__(self, message: str, block_id: str | None = None) -> None:
        super().__init__(message)
        self.block_id = block_id


class RetryableError(StrataError):
    """A transient failure (network, throttling, 5xx, lease held by another process)."""


class ObjectNotFound(StrataError):
    """The key does not exist in the object store."""

    def __init__(self, key: str) -> None:
        super().__init__(f"object not found: {key}")
        self.key = key


class PreconditionFailed(StrataError):
    """A conditional write lost: the object exists (put-if-absent) or changed (if-match)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"precondition failed on {key}")
        self.key = key


class BlockCorruptError(HaltError):
    """A block's files do not match its meta.json, or its contents break the format."""


class HashCollisionError(HaltError):
    """Two different label sets produced the same series_hash."""


class Unauthenticated(StrataError):
    """Missing or unknown bearer token."""


class Forbidden(StrataError):
    """A token asked for a tenant it does not own."""


class LimitExceeded(StrataError):
    """A request asked for more than the configured limits allow (`kind`: series, samples, time, rows)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.http_status = 413 if kind == "samples" else None  # too many samples: 413, others 422


# ---- the one error table ------------------------------------------------------------------------

EXIT_OK = 0
EXIT_ERROR = 1      # bad input or a failure that is neither halt nor retry
EXIT_USAGE = 2      # click's own usage errors
EXIT_HALT = 3       # integrity problem: do not retry, alert
EXIT_RETRY = 75     # transient (EX_TEMPFAIL): the CronJob may retry


@dataclass(frozen=True)
class ErrorClass:
    """What one error family means to each kind of caller."""

    family: type
    exit_code: int
    http_status: int
    grpc_code: str      # grpc.StatusCode member name
    error_type: str     # Prometheus API `errorType`


# First match wins: subclasses before their parents.
ERROR_TABLE: tuple[ErrorClass, ...] = (
    ErrorClass(Unauthenticated, EXIT_ERROR, 401, "UNAUTHENTICATED", "unauthorized"),
    ErrorClass(Forbidden, EXIT_ERROR, 403, "PERMISSION_DENIED", "forbidden"),
    ErrorClass(LimitExceeded, EXIT_ERROR, 422, "RESOURCE_EXHAUSTED", "execution"),
    ErrorClass(InvalidInputError, EXIT_ERROR, 400, "INVALID_ARGUMENT", "bad_data"),
    ErrorClass(ObjectNotFound, EXIT_ERROR, 404, "NOT_FOUND", "not_found"),
    ErrorClass(HaltError, EXIT_HALT, 500, "DATA_LOSS", "internal"),
    ErrorClass(PreconditionFailed, EXIT_RETRY, 409, "ABORTED", "conflict"),
    ErrorClass(RetryableError, EXIT_RETRY, 503, "UNAVAILABLE", "unavailable"),
    ErrorClass(StrataError, EXIT_ERROR, 500, "INTERNAL", "internal"),
)
_UNEXPECTED = ErrorClass(Exception, EXIT_ERROR, 500, "INTERNAL", "internal")
# An OS error outside the object store (disk full, a socket gone) is transient for a server.
_OS = ErrorClass(OSError, EXIT_ERROR, 503, "UNAVAILABLE", "unavailable")


def classify(exc: BaseException) -> ErrorClass:
    """The row of `ERROR_TABLE` for an exception (unexpected ones: 1 / 500 / INTERNAL)."""
    for row in ERROR_TABLE:
        if isinstance(exc, row.family):
            return row
    return _OS if isinstance(exc, OSError) else _UNEXPECTED


def exit_code_for(exc: BaseException) -> int:
    """Process exit code of a command that ended with `exc`."""
    return classify(exc).exit_code


def http_status_for(exc: BaseException) -> int:
    """HTTP status of a request that ended with `exc` (an error may carry its own, e.g. 413)."""
    return getattr(exc, "http_status", None) or classify(exc).http_status


def grpc_code_for(exc: BaseException) -> str:
    """grpc.StatusCode member name of a call that ended with `exc`."""
    return classify(exc).grpc_code
