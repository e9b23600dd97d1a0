"""Strata's exception tree: one root, two families that decide what a caller does next."""

from __future__ import annotations


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
