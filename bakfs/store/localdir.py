"""The embedded default store: a local directory with S3's key layout.

`<root>/<bucket>/<key>` holds each object, so a tree copied to S3 as is (or synced with any
S3 tool) is a valid Cinder backup store. Writes are atomic (temp file, fsync, rename, fsync of
the directory); each object's MD5 is kept in a `user.bakfs.md5` extended attribute set before
the rename and checked on every whole read, the local equivalent of S3's Content-MD5.
Names starting with '.' are the store's own (temp files) and never listed.

Blocking code, safe for concurrent use from several threads.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from bakfs.errors import (
    AlreadyExists,
    ChecksumMismatch,
    IntegrityError,
    ObjectMissing,
    StoreError,
    StoreRefused,
    StoreUnreachable,
)
from bakfs.store.base import CHUNK, ObjectInfo, describe_local

log = logging.getLogger(__name__)

MD5_XATTR = "user.bakfs.md5"
_TEMP_PREFIX = ".tmp-"


class LocalStore:
    """A directory as a bakfs object store."""

    def __init__(self, root: Path, bucket: str, *, create_bucket: bool = True) -> None:
        self.root = root
        self.bucket = bucket
        self.path = root / bucket
        self.create_bucket = create_bucket
        self._xattrs = True

    @property
    def description(self) -> str:
        return describe_local(self.path)

    def ensure_bucket(self) -> None:
        if self.path.is_dir():
            return
        if not self.create_bucket:
            raise ObjectMissing(f"{self.description} does not exist and s3.create_bucket is false")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _os_error(exc, f"create {self.description}", None) from exc

    def _file(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            raise StoreRefused(f"{self.description}: {key!r} is not a valid object key", key)
        return self.path.joinpath(*parts)

    def put(self, key: str, data: bytes | memoryview, *, if_absent: bool = False,
            if_match: str | None = None, md5: bytes | None = None) -> str | None:
        target = self._file(key)
        temp = target.parent / f"{_TEMP_PREFIX}{uuid.uuid4().hex}"
        actual = hashlib.md5(data, usedforsecurity=False).digest()
        if md5 is not None and md5 != actual:  # as S3 answers a wrong Content-MD5
            raise ChecksumMismatch(f"{self.description}: {key}: the data does not have the "
                                   "md5 given with it (BadDigest)", key)
        digest = actual.hex()
        try:
            if not self.path.is_dir():
                raise ObjectMissing(f"{self.description} does not exist", key)
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(temp, "xb") as f:
                f.write(data)
                f.flush()
                self._set_md5(f.fileno(), digest)
                os.fsync(f.fileno())
            if if_absent:
                try:
                    os.link(temp, target)  # atomic: fails if the key exists
                except FileExistsError:
                    raise AlreadyExists(f"{self.description}: {key} already exists", key) from None
                finally:
                    temp.unlink(missing_ok=True)
            elif if_match is not None:
                self._replace_if_match(temp, target, if_match, key)
            else:
                os.replace(temp, target)
            _fsync_dir(target.parent)
            return digest if self._xattrs else None
        except StoreError:
            raise
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise _os_error(exc, f"write {key} to {self.description}", key) from exc

    def put_stream(self, key: str, chunks: Iterable[bytes | memoryview]) -> ObjectInfo:
        """Chunks written to a temp file as they come, md5 summed on the way, then renamed
        into place (atomic, as `put`)."""
        target = self._file(key)
        temp = target.parent / f"{_TEMP_PREFIX}{uuid.uuid4().hex}"
        digest = hashlib.md5(usedforsecurity=False)
        size = 0
        try:
            if not self.path.is_dir():
                raise ObjectMissing(f"{self.description} does not exist", key)
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(temp, "xb") as f:
                for chunk in chunks:
                    f.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                f.flush()
                self._set_md5(f.fileno(), digest.hexdigest())
                os.fsync(f.fileno())
            os.replace(temp, target)
            _fsync_dir(target.parent)
        except StoreError:
            raise
        except OSError as exc:
            raise _os_error(exc, f"write {key} to {self.description}", key) from exc
        finally:
            temp.unlink(missing_ok=True)
        return ObjectInfo(key, size, None, digest.hexdigest() if self._xattrs else None)

    def _replace_if_match(self, temp: Path, target: Path, etag: str, key: str) -> None:
        """Compare-and-swap under an exclusive lock on the bucket directory (local writers
        all take it for conditional puts)."""
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = self._etag_of(target)
            except FileNotFoundError:
                current = None
            if current != etag:
                temp.unlink(missing_ok=True)
                raise AlreadyExists(f"{self.description}: {key} changed (etag {current}, "
                                    f"expected {etag})", key)
            os.replace(temp, target)
        finally:
            os.close(fd)

    def _etag_of(self, path: Path) -> str:
        """The object's MD5 as S3 would give it for a single-part put."""
        with open(path, "rb") as f:
            stored = self._get_md5(f.fileno())
            if stored is not None:
                return stored
            return hashlib.md5(f.read(), usedforsecurity=False).hexdigest()

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        path = self._file(key)
        try:
            with open(path, "rb") as f:
                if byte_range is not None:
                    start, end = byte_range
                    f.seek(start)
                    return f.read(max(0, end - start))
                data = f.read()
                expected = self._get_md5(f.fileno())
        except OSError as exc:
            raise _os_error(exc, f"read {key} from {self.description}", key) from exc
        if expected is not None:
            actual = hashlib.md5(data, usedforsecurity=False).hexdigest()
            if actual != expected:
                raise IntegrityError(f"{self.description}: {key} has md5 {actual}, but "
                                     f"{expected} was stored: the file was damaged", key)
        return data

    def iter_object(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """Pieces of the file; no whole-object MD5 check here (a reader that streams checks
        the plain bytes it decodes instead)."""
        path = self._file(key)
        try:
            f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
        except OSError as exc:
            raise _os_error(exc, f"read {key} from {self.description}", key) from exc
        with f:
            while True:
                try:
                    chunk = f.read(chunk_size)
                except OSError as exc:
                    raise _os_error(exc, f"read {key} from {self.description}", key) from exc
                if not chunk:
                    return
                yield chunk

    def head(self, key: str) -> ObjectInfo:
        path = self._file(key)
        try:
            st = path.stat()
            etag = self._etag_of(path)
        except OSError as exc:
            raise _os_error(exc, f"stat {key} in {self.description}", key) from exc
        return ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC), etag)

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        # Start at the deepest directory the prefix names, then walk in key order.
        head, _, _ = prefix.rpartition("/")
        start = self.path.joinpath(*head.split("/")) if head else self.path
        if not self.path.is_dir():
            raise ObjectMissing(f"{self.description} does not exist")
        base = f"{head}/" if head else ""
        yield from self._walk(start, base, prefix, start_after or "")

    def _walk(self, directory: Path, base: str, prefix: str, after: str
              ) -> Iterator[ObjectInfo]:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _os_error(exc, f"list {directory}", None) from exc
        # Keys sort as S3 sorts them: a directory's children sort as "name/..." among files.
        items = sorted(((e.name + "/" if e.is_dir() else e.name), e) for e in entries
                       if not e.name.startswith("."))
        for name, entry in items:
            key = base + name
            if not (key.startswith(prefix) or prefix.startswith(key)):
                continue
            if key <= after and not after.startswith(key):
                continue  # and so is every key under it
            if name.endswith("/"):
                yield from self._walk(Path(entry.path), key, prefix, after)
            elif key.startswith(prefix) and key > after:
                st = entry.stat()
                yield ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC),
                                 self._stored_md5(entry.path))

    def delete(self, key: str) -> None:
        path = self._file(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _os_error(exc, f"delete {key} from {self.description}", key) from exc
        # Drop directories the delete left empty, as S3 has no empty "directories".
        parent = path.parent
        while parent != self.path:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def close(self) -> None:
        pass

    def _set_md5(self, fd: int, digest: str) -> None:
        if not self._xattrs:
            return
        try:
            os.setxattr(fd, MD5_XATTR, digest.encode())
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            self._xattrs = False
            log.warning("%s: the filesystem has no user xattrs; object MD5s are not kept",
                        self.description)

    def _stored_md5(self, path: str) -> str | None:
        try:
            return os.getxattr(path, MD5_XATTR).decode()
        except OSError:
            return None

    def _get_md5(self, fd: int) -> str | None:
        try:
            return os.getxattr(fd, MD5_XATTR).decode()
        except OSError:
            return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _os_error(exc: OSError, what: str, key: str | None) -> StoreError:
    reason = exc.strerror or str(exc)
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return ObjectMissing(f"{what}: no such object", key)
    if isinstance(exc, PermissionError):
        return StoreRefused(f"{what}: permission denied", key)
    return StoreUnreachable(f"{what}: {reason}", key)
