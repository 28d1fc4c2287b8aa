"""`bakfs restore BACKUP TARGET`: write a backup's whole volume to a file or a block device
through the read engine, and report bytes, time, throughput, objects fetched and sha256.

A TARGET that does not exist becomes a new sparse file: 64 KiB windows that are all zero
are not written (Cinder does the same with 1 MiB windows for a new volume) and the file is
truncated to the volume size. An existing regular file or a block device gets every byte
written (its old contents must not show through). On failure a file this command created is removed.

The volume is read sequentially in large requests, so the engine's read-ahead fetches the
next objects in parallel; writing and hashing run in their own threads beside the reads
(a memory channel of a few requests in between keeps memory flat).

Async on trio inside `run_restore`; blocking work through `bakfs.blocking`. Knows nothing of
FUSE or of the index's layout.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import mmap
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

import trio

from bakfs.blocking import plain_errors
from bakfs.config import Config
from bakfs.errors import BakfsError
from bakfs.reader import Engine, open_engine
from bakfs.store.base import ObjectStore

READ_SIZE = 8 << 20
ZERO_WINDOW = 64 << 10
_ZEROS = bytes(ZERO_WINDOW)
QUEUE_DEPTH = 3
DIRECT_ALIGN = 4096


class TargetError(BakfsError):
    """The restore target cannot be used or written."""


@dataclasses.dataclass
class RestoreResult:
    backup_id: str
    target: str
    bytes: int
    written_bytes: int
    seconds: float
    mb_per_s: float
    objects_fetched: int
    fetched_bytes: int
    cache_hits: int
    sha256: str
    sparse: bool

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Target:
    """The open target (blocking methods, run in a disk thread). Data goes through one
    page-aligned buffer, reused for every request, and is written with O_DIRECT where the
    target allows it: no page-cache copy of the whole volume (which on this VM costs a
    first-touch fault per page) and no cache pollution. The unaligned tail, and targets
    without O_DIRECT (tmpfs), use a buffered descriptor."""

    def __init__(self, path: str, fd: int, sparse: bool, created: bool) -> None:
        self.path = path
        self.fd = fd
        self.sparse = sparse
        self.created = created
        self.direct_fd: int | None = None
        try:
            self.direct_fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
        except (OSError, AttributeError):
            self.direct_fd = None
        self.buffer = mmap.mmap(-1, READ_SIZE)
        self.view = memoryview(self.buffer)

    def write(self, offset: int, parts: list[memoryview | int]) -> int:
        """Write consecutive parts (data views; ints are runs of zeros) at `offset`, which
        is a multiple of READ_SIZE. A sparse target skips all-zero windows. Returns the
        bytes written."""
        view = self.view
        pos = 0
        for part in parts:
            if isinstance(part, int):
                end = pos + part
                while pos < end:
                    n = min(end - pos, ZERO_WINDOW)
                    view[pos:pos + n] = _ZEROS[:n]
                    pos += n
            else:
                view[pos:pos + len(part)] = part
                pos += len(part)
        length = pos
        if not self.sparse:
            self._pwrite(offset, 0, length)
            return length
        written = 0
        start = None
        for pos in range(0, length, ZERO_WINDOW):
            end = min(pos + ZERO_WINDOW, length)
            zero = self.buffer[pos:end] == _ZEROS[:end - pos]
            if zero and start is not None:
                self._pwrite(offset, start, pos)
                written += pos - start
                start = None
            elif not zero and start is None:
                start = pos
        if start is not None:
            self._pwrite(offset, start, length)
            written += length - start
        return written

    def _pwrite(self, base: int, start: int, end: int) -> None:
        aligned = end - (end - start) % DIRECT_ALIGN if self.direct_fd is not None else start
        if aligned > start:
            try:
                _pwrite_all(self.direct_fd, self.view[start:aligned], base + start)  # type: ignore[arg-type]
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # the filesystem refuses O_DIRECT writes after all: buffered from now on
                os.close(self.direct_fd)  # type: ignore[arg-type]
                self.direct_fd = None
                aligned = start
        if end > aligned:
            _pwrite_all(self.fd, self.view[aligned:end], base + aligned)

    def finish(self, size: int) -> None:
        if self.sparse or stat.S_ISREG(os.fstat(self.fd).st_mode):
            os.ftruncate(self.fd, size)
        if self.direct_fd is not None:
            os.fsync(self.direct_fd)
        os.fsync(self.fd)

    def close(self) -> None:
        if self.direct_fd is not None:
            os.close(self.direct_fd)
            self.direct_fd = None
        os.close(self.fd)
        self.view.release()
        self.buffer.close()


def _open_target(target: str, size: int) -> _Target:
    """Open TARGET for writing `size` bytes (blocking)."""
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise TargetError(f"cannot use {target}: {exc.strerror}") from None
    try:
        if st is None:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            return _Target(target, fd, True, True)
        if stat.S_ISBLK(st.st_mode):
            fd = os.open(target, os.O_WRONLY)
            device_size = os.lseek(fd, 0, os.SEEK_END)
            if device_size < size:
                os.close(fd)
                raise TargetError(f"{target} holds {device_size} bytes; the volume needs {size}")
            return _Target(target, fd, False, False)
        if stat.S_ISREG(st.st_mode):
            fd = os.open(target, os.O_WRONLY)
            return _Target(target, fd, False, False)
    except OSError as exc:
        raise TargetError(f"cannot open {target} for writing: {exc.strerror}") from None
    raise TargetError(f"{target} is neither a regular file nor a block device")


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _hash_parts(digest: Any, parts: list[memoryview | int]) -> None:
    zeros = memoryview(_ZEROS)
    for part in parts:
        if isinstance(part, int):
            while part:
                n = min(part, len(zeros))
                digest.update(zeros[:n])
                part -= n
        else:
            digest.update(part)


class _Progress:
    """A tqdm bar on a terminal, JSON lines on stderr with --json, else nothing."""

    def __init__(self, total: int, as_json: bool) -> None:
        self.as_json = as_json
        self.bar: Any = None
        self.done = 0
        self.last = 0.0
        if not as_json and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                            desc="restore", file=sys.stderr)
        self.total = total

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.as_json and time.monotonic() - self.last >= 1.0:
            self.last = time.monotonic()
            print(json.dumps({"progress": self.done, "total": self.total}), file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


async def restore(engine: Engine, backup_id: str, target_path: str,
                  progress: _Progress | None = None) -> RestoreResult:
    """Restore one backup to `target_path` with a running engine."""
    started = time.monotonic()
    record = await engine.backup(backup_id)
    size = record.size
    bridge = engine.bridge
    fetches0 = engine.cache.stats.fetches
    fetched0 = engine.cache.stats.fetched_bytes
    hits0 = engine.cache.stats.memory_hits + engine.cache.stats.disk_hits
    target = await bridge.run_disk(_open_target, target_path, size)
    digest = hashlib.sha256()
    written = 0
    ok = False
    # The reader feeds two consumers that run side by side: the writer (disk thread) and the
    # hasher (cpu thread), each through its own small channel.
    Item = tuple[int, int, list[memoryview | int]]
    write_send, write_receive = trio.open_memory_channel[Item](QUEUE_DEPTH)
    hash_send, hash_receive = trio.open_memory_channel[Item](QUEUE_DEPTH)

    async def reader() -> None:
        async with write_send, hash_send:
            offset = 0
            stream = object()
            while offset < size:
                parts = await engine.read_parts(backup_id, offset,
                                                min(READ_SIZE, size - offset), stream=stream)
                length = sum(p if isinstance(p, int) else len(p) for p in parts)
                if not length:
                    raise BakfsError(f"backup {backup_id} ended at {offset} of {size} bytes")
                await write_send.send((offset, length, parts))
                await hash_send.send((offset, length, parts))
                offset += length

    async def writer() -> None:
        nonlocal written
        async with write_receive:
            async for offset, length, parts in write_receive:
                written += await bridge.run_disk(target.write, offset, parts)
                if progress is not None:
                    progress.update(length)

    async def hasher() -> None:
        async with hash_receive:
            async for _offset, _length, parts in hash_receive:
                await bridge.run_cpu(_hash_parts, digest, parts)

    try:
        with plain_errors():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                nursery.start_soon(writer)
                nursery.start_soon(hasher)
        await bridge.run_disk(target.finish, size)
        ok = True
    except OSError as exc:
        raise TargetError(f"cannot write {target_path}: {exc.strerror or exc}") from None
    finally:
        await bridge.run_disk(target.close)
        if not ok and target.created:
            await bridge.run_disk(Path(target_path).unlink, True)
    seconds = max(time.monotonic() - started, 1e-9)
    stats = engine.cache.stats
    return RestoreResult(
        backup_id=backup_id, target=target_path, bytes=size, written_bytes=written,
        seconds=round(seconds, 3), mb_per_s=round(size / seconds / 1e6, 1),
        objects_fetched=stats.fetches - fetches0, fetched_bytes=stats.fetched_bytes - fetched0,
        cache_hits=stats.memory_hits + stats.disk_hits - hits0,
        sha256=digest.hexdigest(), sparse=target.sparse)


async def restore_with(config: Config, backup_id: str, target: str, *,
                       store: ObjectStore | None = None, as_json: bool = False,
                       show_progress: bool = True) -> RestoreResult:
    """Open an engine for `config` and restore; the entry point for tests and benchmarks."""
    async with open_engine(config, store) as engine:
        record = await engine.backup(backup_id)
        progress = _Progress(record.size, as_json) if show_progress else None
        try:
            return await restore(engine, backup_id, target, progress)
        finally:
            if progress is not None:
                progress.close()


def run_restore(config: Config, backup_id: str, target: str, *, as_json: bool) -> int:
    """`bakfs restore BACKUP TARGET [--json]`."""
    result = trio.run(lambda: restore_with(config, backup_id, target, as_json=as_json))
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(f"restored backup {backup_id} to {target}: {result.bytes} bytes in "
              f"{result.seconds:.2f} s ({result.mb_per_s} MB/s), {result.objects_fetched} "
              f"objects fetched, sha256 {result.sha256}")
    return 0
