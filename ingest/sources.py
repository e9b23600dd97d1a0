"""Import inputs: local files or `s3://bucket/key-glob` objects, gzip/zstd decompressed as a stream.

Every source is read once, front to back, in bounded pieces; the raw (still compressed) bytes
feed the import's content digest on the way through.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from blocks.errors import InvalidInputError

TEXT_FORMATS = ("openmetrics", "prometheus")


def compression_of(name: str) -> str | None:
    """'gzip', 'zstd' or None, by file name suffix."""
    if name.endswith(".gz"):
        return "gzip"
    if name.endswith((".zst", ".zstd")):
        return "zstd"
    return None


def base_name(name: str) -> str:
    """Name without a compression suffix (`a.om.gz` -> `a.om`)."""
    for suffix in (".gz", ".zstd", ".zst"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def format_by_name(name: str) -> str | None:
    """Input format from the (decompressed) file name, None when the name does not say."""
    base = base_name(name)
    if base.endswith(".parquet"):
        return "parquet"
    if base.endswith((".om", ".openmetrics")):
        return "openmetrics"
    if base.endswith((".prom", ".txt")):
        return "prometheus"
    return None


class _Counting(io.RawIOBase):
    """Reads through to `inner`, counting and hashing the raw bytes."""

    def __init__(self, inner: BinaryIO, digest, on_bytes: Callable[[int], None] | None):
        self.inner, self.digest, self.on_bytes, self.count = inner, digest, on_bytes, 0

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            try:
                self.inner.close()
            finally:
                super().close()

    def readinto(self, b) -> int:
        into = getattr(self.inner, "readinto", None)
        if into is not None:
            n = into(b) or 0
            data = memoryview(b)[:n]
        else:
            data = self.inner.read(len(b))
            n = len(data)
            b[:n] = data
        self.count += n
        if self.digest is not None:
            self.digest.update(data)
        if self.on_bytes is not None:
            self.on_bytes(n)
        return n


@dataclass
class Source:
    """One input: a display name, its raw size, and how to open its raw bytes."""

    name: str
    size: int
    opener: Callable[[], BinaryIO]

    @property
    def compression(self) -> str | None:
        return compression_of(self.name)

    def open_decoded(self, digest=None, on_bytes: Callable[[int], None] | None = None) -> BinaryIO:
        """A buffered stream of the decompressed bytes; raw bytes go to `digest` as they are read."""
        raw = io.BufferedReader(_Counting(self.opener(), digest, on_bytes), 1 << 20)
        if self.compression == "gzip":
            return gzip.GzipFile(fileobj=raw, mode="rb")
        if self.compression == "zstd":
            import zstandard
            return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True),
                                     1 << 20)
        return raw

    def copy_decoded_to(self, path: Path, digest=None, on_bytes=None) -> None:
        """Decompress into a local file (Parquet needs random access)."""
        with self.open_decoded(digest, on_bytes) as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)

    def local_path(self) -> Path | None:
        """The file itself, when it is a local uncompressed file."""
        p = Path(self.name)
        return p if not self.name.startswith("s3://") and self.compression is None else None


def _s3_sources(url: str, client) -> list[Source]:
    rest = url[len("s3://"):]
    bucket, _, pattern = rest.partition("/")
    if not bucket or not pattern:
        raise InvalidInputError(f"{url}: want s3://bucket/key or s3://bucket/prefix/*.glob")
    wild = next((i for i, c in enumerate(pattern) if c in "*?["), None)
    prefix = pattern if wild is None else pattern[:wild]
    keys: list[tuple[str, int]] = []
    paginator = client.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if fnmatch.fnmatchcase(obj["Key"], pattern) and not obj["Key"].endswith("/"):
                    keys.append((obj["Key"], int(obj["Size"])))
    except Exception as e:  # botocore ClientError / connection errors: one line
        raise InvalidInputError(f"{url}: cannot list: {e}") from None
    if not keys:
        raise InvalidInputError(f"{url}: no object matches")

    def opener(key: str):
        def open_() -> BinaryIO:
            return client.get_object(Bucket=bucket, Key=key)["Body"]
        return open_

    return [Source(f"s3://{bucket}/{k}", size, opener(k)) for k, size in sorted(keys)]


def resolve_sources(inputs: list, s3_client_factory: Callable[[], object] | None = None) -> list[Source]:
    """Local paths and s3:// URLs (with globs) as Sources, in the order given (globs sorted)."""
    out: list[Source] = []
    client = None
    for item in inputs:
        text = str(item)
        if text.startswith("s3://"):
            if client is None:
                if s3_client_factory is None:
                    raise InvalidInputError(f"{text}: no S3 client configured for s3:// inputs")
                client = s3_client_factory()
            out.extend(_s3_sources(text, client))
            continue
        p = Path(text)
        if p.is_dir():
            raise InvalidInputError(f"{p}: is a directory (give the files, e.g. {p}/*.om)")
        if not p.is_file():
            raise InvalidInputError(f"{p}: no such file")
        out.append(Source(str(p), p.stat().st_size, lambda p=p: open(p, "rb")))
    if not out:
        raise InvalidInputError("no input files")
    return out


def new_digest():
    """The content digest of an import (BLAKE2b: cryptographic, and ~1.6x SHA-256's speed here)."""
    return hashlib.blake2b(digest_size=32)
