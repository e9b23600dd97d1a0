"""A directory on local disk as a bucket (the embedded default)."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

from blocks.errors import InvalidInputError, ObjectNotFound, PreconditionFailed

from blocks.objstore.base import Payload, ObjectInfo, _check_key, _children

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
