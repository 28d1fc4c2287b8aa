"""Staging TSM backups into local files, and serving reads while a staging is under way.

A TSM object can only be read whole, by `dsmc restore`, so the first read of a TSM backup
starts a restore into `<staging dir>/<backup_id>.img`. Reads of ranges the restore has
already written return at once; reads beyond wait for it to pass them (not for the whole
restore). When dsmc has finished, bakfs checks size and sha256 against the backup's record
and only then marks the staging complete (the `<backup_id>.ok` file holds the sha256, so a
later run adopts it). A failed staging fails its waiting reads and is retried by the next.

Which bytes are "written": dsmc writes a restore sequentially [R: docs/tsm.md], so every
byte below the file's size was written, and holes a sparse writer skipped read as the zeros
they stand for. A file already at full size while dsmc still runs (preallocated, or written
out of order) proves nothing, so its reads wait for the end and the sha256 check.
`progressive=False` always waits. The sha256 is computed as the proven prefix grows, so the
check at the end only reads what was not hashed yet.

The staging area is bounded: finished stagings are evicted least recently used first to make
room for a new one, never one that is pinned (an open file, a read in progress) or still
staging. One manager owns a staging directory at a time (an flock on `.lock`).

Async on trio: dsmc through `DsmcRunner.run_async` (trio's process API); file I/O in worker
threads through `bakfs.threads`. Knows nothing of FUSE (the mount maps its errors to EIO and
shows `progress()` in xattrs and the status file) nor of the object store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import trio

from bakfs.errors import (
    StagingBusy,
    StagingFailed,
    StagingNoSpace,
    TsmError,
    TsmIntegrityError,
)
from bakfs.threads import Bridge, plain_errors
from bakfs.tsm.records import TsmRecord
from bakfs.tsm.runner import DsmcRunner

log = logging.getLogger(__name__)

State = Literal["staging", "verifying", "complete", "failed"]
POLL_INTERVAL = 0.05
HASH_STEP = 8 << 20


@dataclasses.dataclass(frozen=True)
class StagingProgress:
    """What the mount shows in xattrs and the status file."""

    backup_id: str
    state: State
    staged_bytes: int
    total_bytes: int
    attempts: int
    error: str | None
    started_at: float | None
    finished_at: float | None
    pins: int

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    def xattrs(self) -> dict[str, bytes]:
        """`user.bakfs.staging.*` values for the backup's file."""
        values = {"state": self.state, "bytes": str(self.staged_bytes),
                  "total": str(self.total_bytes), "attempts": str(self.attempts),
                  "error": self.error or ""}
        return {f"user.bakfs.staging.{k}": v.encode() for k, v in values.items()}


class _Staging:
    """One backup's staging. Invariants: bytes [0, proven) of `path` are the backup's bytes;
    `state == "complete"` only after the size and sha256 check passed."""

    def __init__(self, backup_id: str, size: int, path: Path, ok_path: Path) -> None:
        self.backup_id = backup_id
        self.size = size
        self.path = path
        self.ok_path = ok_path
        self.record: TsmRecord | None = None
        self.ok_sha: str | None = None  # the verified sha256 of a staging adopted from disk
        self.state: State = "staging"
        self.proven = 0
        self.error: BaseException | None = None
        self.attempts = 0
        self.readers = 0  # reads and waits in progress
        self.last_used = time.monotonic()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.changed = trio.Event()

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def progress(self, pins: int) -> StagingProgress:
        return StagingProgress(
            self.backup_id, self.state, self.size if self.state == "complete" else self.proven,
            self.size, self.attempts, None if self.error is None else str(self.error),
            self.started_at, self.finished_at, pins + self.readers)


class StagingManager:
    """The staging area. Make it with `open_staging_manager` (or run `serve` in the mount's
    nursery); then `await read(record, offset, size)`, `await stage(record)`,
    `pin`/`unpin` around open files, `progress(backup_id)`."""

    def __init__(self, runner: DsmcRunner, directory: Path, max_bytes: int, *,
                 progressive: bool = True, poll_interval: float = POLL_INTERVAL,
                 bridge: Bridge | None = None) -> None:
        self.runner = runner
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.progressive = progressive
        self.poll_interval = poll_interval
        self._bridge = bridge
        self._stagings: dict[str, _Staging] = {}
        self._pins: dict[str, int] = {}
        self._nursery: trio.Nursery | None = None
        self._lock_fd: int | None = None

    @property
    def bridge(self) -> Bridge:
        if self._bridge is None:
            raise RuntimeError("the staging manager is not running")
        return self._bridge

    # ---- lifecycle -----------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[StagingManager]
                    = trio.TASK_STATUS_IGNORED) -> None:
        """Run the manager until cancelled (for `nursery.start` in the mount)."""
        if self._bridge is None:
            self._bridge = Bridge.create()
        await self._bridge.run_disk(self._open_directory)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                await self.bridge.run_disk(self._close_directory)

    def _open_directory(self) -> None:
        """Take the directory (flock), drop leftovers of interrupted stagings, adopt finished
        ones (their `.ok` file names the sha256 that was verified)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise StagingBusy(f"the staging area {self.directory} is in use by process "
                                  f"{holder} (a running mount? `bakfs stage --mount MOUNTPOINT` "
                                  "stages through it)") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd
        for entry in os.scandir(self.directory):
            name = entry.name
            if name.endswith(".img"):
                backup_id = name[:-4]
                ok = self.directory / f"{backup_id}.ok"
                ok_sha = _read_ok(ok)
                if ok_sha is not None:
                    st = self._new(backup_id, entry.stat().st_size)
                    st.ok_sha = ok_sha
                    st.state = "complete"
                    st.proven = st.size
                    self._stagings[backup_id] = st
                    continue
                log.info("staging area: removing the unfinished staging %s", name)
            elif name == ".lock" or (name.endswith(".ok")
                                     and (self.directory / f"{name[:-3]}.img").exists()):
                continue
            with contextlib.suppress(OSError):
                os.unlink(entry.path)

    def _close_directory(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _new(self, backup_id: str, size: int) -> _Staging:
        return _Staging(backup_id, size, self.directory / f"{backup_id}.img",
                        self.directory / f"{backup_id}.ok")

    # ---- what the mount calls ----------------------------------------------------------

    def progress(self, backup_id: str) -> StagingProgress | None:
        st = self._stagings.get(backup_id)
        return None if st is None else st.progress(self._pins.get(backup_id, 0))

    def all_progress(self) -> list[StagingProgress]:
        return [st.progress(self._pins.get(st.backup_id, 0)) for st in self._stagings.values()]

    def used_bytes(self) -> int:
        return sum(st.size for st in self._stagings.values() if st.state != "failed")

    def pin(self, backup_id: str) -> None:
        """Keep the backup's staging from eviction while a file handle is open (whether or
        not its staging has started yet); pair with `unpin`."""
        self._pins[backup_id] = self._pins.get(backup_id, 0) + 1

    def unpin(self, backup_id: str) -> None:
        n = self._pins.get(backup_id, 0) - 1
        if n > 0:
            self._pins[backup_id] = n
        else:
            self._pins.pop(backup_id, None)
        st = self._stagings.get(backup_id)
        if st is not None:
            st.last_used = time.monotonic()

    def _in_use(self, st: _Staging) -> bool:
        return st.readers > 0 or self._pins.get(st.backup_id, 0) > 0

    async def stage(self, record: TsmRecord) -> StagingProgress:
        """Start staging (if it is not staged or staging already); return at once."""
        return self._ensure(record).progress(self._pins.get(record.backup_id, 0))

    async def wait_complete(self, record: TsmRecord) -> StagingProgress:
        """Stage and wait until complete; raises StagingFailed when it fails."""
        st = self._ensure(record)
        st.readers += 1
        try:
            while st.state != "complete":
                if st.state == "failed":
                    raise self._failure(st)
                await st.changed.wait()
        finally:
            st.readers -= 1
            st.last_used = time.monotonic()
        return st.progress(self._pins.get(record.backup_id, 0))

    async def changed(self, backup_id: str) -> None:
        """Wait for the next progress change of a staging (for progress bars)."""
        st = self._stagings.get(backup_id)
        if st is not None:
            await st.changed.wait()

    async def read(self, record: TsmRecord, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) of the backup (fewer at its end), as soon as staged."""
        end = min(offset + size, record.size)
        if offset >= end:
            return b""
        st = self._ensure(record)
        st.readers += 1
        try:
            while not (st.state == "complete" or (st.state in ("staging", "verifying")
                                                  and st.proven >= end)):
                if st.state == "failed":
                    raise self._failure(st)
                await st.changed.wait()
            path = st.path
            return await self.bridge.run_disk(_pread, path, offset, end - offset)
        finally:
            st.readers -= 1
            st.last_used = time.monotonic()

    # ---- staging -----------------------------------------------------------------------

    def _failure(self, st: _Staging) -> StagingFailed:
        return StagingFailed(f"staging of TSM backup {st.backup_id} failed: {st.error}",
                             st.error)

    def _ensure(self, record: TsmRecord) -> _Staging:
        """The staging of `record`, started (again, after a failure) when needed."""
        if self._nursery is None:
            raise RuntimeError("the staging manager is not running")
        st = self._stagings.get(record.backup_id)
        if st is not None and st.state == "complete" and st.record is None:
            # adopted from disk: usable only if it is this record's bytes
            if st.size == record.size and st.ok_sha == record.sha256:
                st.record = record
            else:
                log.warning("staging area: %s does not match the backup's record; staging "
                            "it again", st.path.name)
                st.state = "failed"
        if st is not None and st.state != "failed":
            st.last_used = time.monotonic()
            return st
        if st is None:
            st = self._new(record.backup_id, record.size)
            self._stagings[record.backup_id] = st
        st.record = record
        st.size = record.size
        st.state = "staging"
        st.proven = 0
        st.error = None
        st.attempts += 1
        st.started_at = time.time()
        st.finished_at = None
        st.last_used = time.monotonic()
        self._nursery.start_soon(self._run, st, record)
        return st

    def _make_room(self, st: _Staging) -> list[_Staging]:
        """Choose finished, unpinned stagings to evict (least recently used first) so that
        `st` fits; raise StagingNoSpace when it cannot fit."""
        if st.size > self.max_bytes:
            raise StagingNoSpace(f"backup {st.backup_id} has {st.size} bytes; the staging area "
                                 f"holds at most {self.max_bytes}")
        others = [o for o in self._stagings.values() if o is not st and o.state != "failed"]
        used = sum(o.size for o in others)
        victims = []
        for o in sorted(others, key=lambda o: o.last_used):
            if used + st.size <= self.max_bytes:
                break
            if o.state == "complete" and not self._in_use(o):
                victims.append(o)
                used -= o.size
        if used + st.size > self.max_bytes:
            raise StagingNoSpace(
                f"the staging area ({self.max_bytes} bytes) cannot take backup {st.backup_id} "
                f"({st.size} bytes) now: {used} bytes are held by stagings in use or running")
        return victims

    async def _run(self, st: _Staging, record: TsmRecord) -> None:
        try:
            victims = self._make_room(st)
            for victim in victims:  # all forgotten before the first await: none can be pinned
                log.info("staging area: evicting %s (least recently used)", victim.backup_id)
                self._stagings.pop(victim.backup_id, None)
            for victim in victims:
                await self.bridge.run_disk(_remove, victim.ok_path, victim.path)
            await self.bridge.run_disk(_remove, st.ok_path, st.path)
            hasher = hashlib.sha256()
            hashed = 0
            with plain_errors():
                async with trio.open_nursery() as nursery:
                    done = trio.Event()

                    async def follow() -> None:
                        nonlocal hashed
                        while not done.is_set():
                            with trio.move_on_after(self.poll_interval):
                                await done.wait()
                            size = await self.bridge.run_disk(_size, st.path)
                            if done.is_set() or not self.progressive or size >= st.size:
                                continue  # proves nothing (yet): wait for the end
                            if size > hashed:
                                hashed += await self.bridge.run_disk(
                                    _hash_range, st.path, hasher, hashed, size)
                            if hashed > st.proven:
                                st.proven = hashed
                                st.notify()

                    nursery.start_soon(follow)
                    try:
                        await self.runner.restore_to_file_async(record, str(st.path), self.bridge)
                    finally:
                        done.set()
            st.state = "verifying"
            st.notify()
            size = await self.bridge.run_disk(_size, st.path)
            if size != record.size:
                raise TsmIntegrityError(f"dsmc restored {size} bytes, but backup "
                                        f"{record.backup_id} has {record.size}")
            hashed += await self.bridge.run_disk(_hash_range, st.path, hasher, hashed,
                                                    size)
            if hasher.hexdigest() != record.sha256:
                raise TsmIntegrityError(f"the staged bytes have sha256 {hasher.hexdigest()}, "
                                        f"but backup {record.backup_id} recorded "
                                        f"{record.sha256}")
            await self.bridge.run_disk(_write_ok, st.ok_path, record.sha256)
            st.state = "complete"
            st.proven = st.size
            st.finished_at = time.time()
            log.info("staged TSM backup %s (%d bytes) in %.1f s", record.backup_id, st.size,
                     st.finished_at - (st.started_at or st.finished_at))
        except (TsmError, OSError) as exc:
            await self._fail(st, exc)
        except Exception as exc:
            log.exception("staging of TSM backup %s failed unexpectedly", record.backup_id)
            await self._fail(st, exc)
        finally:
            st.notify()

    async def _fail(self, st: _Staging, exc: BaseException) -> None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            exc = StagingNoSpace(f"the staging area {self.directory} is full: {exc.strerror}")
        log.error("staging of TSM backup %s failed (attempt %d): %s; the next read retries",
                  st.backup_id, st.attempts, exc)
        st.proven = 0  # nothing more is served from this attempt
        with trio.CancelScope(shield=True):
            await self.bridge.run_disk(_remove, st.ok_path, st.path)
        st.state = "failed"  # only now: a retry must not race with the removal
        st.error = exc
        st.finished_at = time.time()


@contextlib.asynccontextmanager
async def open_staging_manager(runner: DsmcRunner, directory: Path, max_bytes: int,
                               **options: object) -> AsyncIterator[StagingManager]:
    """A running manager for the duration of the block (CLI and tests)."""
    manager = StagingManager(runner, directory, max_bytes, **options)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.serve)
        try:
            yield manager
        finally:
            nursery.cancel_scope.cancel()


# ---- blocking helpers (run in worker threads) ------------------------------------------------


def _pread(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb", buffering=0) as f:
        parts = []
        while size > 0:
            data = os.pread(f.fileno(), size, offset)
            if not data:
                raise TsmIntegrityError(f"{path} ended at byte {offset}, before the staged "
                                        "range it should hold")
            parts.append(data)
            offset += len(data)
            size -= len(data)
        return b"".join(parts)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _hash_range(path: Path, hasher: hashlib._Hash, start: int, end: int) -> int:
    """Feed bytes [start, end) of `path` to `hasher`; return how many were read."""
    done = 0
    with open(path, "rb", buffering=0) as f:
        while start + done < end:
            data = os.pread(f.fileno(), min(HASH_STEP, end - start - done), start + done)
            if not data:
                break
            hasher.update(data)
            done += len(data)
    return done


def _write_ok(path: Path, sha256: str) -> None:
    tmp = path.with_suffix(".ok-tmp")
    with open(tmp, "w") as f:
        f.write(sha256 + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_ok(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _remove(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
