"""Restoring a backup's whole volume to a file or a block device through the read engine,
and what it did: bytes, time, throughput, objects fetched and, when asked, the end-to-end
check and the volume's sha256.

The volume is read sequentially in large requests, so the engine's read-ahead fetches the
next objects in parallel; writing runs in a disk thread beside the reads (a memory channel
of a few requests in between keeps memory flat). Every object is verified (length and md5)
before any of its bytes are written, so nothing else needs hashing the volume on the
critical path. Two checks are offered on top:

* `check`: every restored block is compared with the backup's `_sha256file`, the end-to-end
  check Cinder never makes (it would catch a damaged index pointing at the wrong bytes).
  Blocks hash in parallel on every core; hole blocks compare with the zero block's digest
  without hashing anything.
* `sha256`: the sha256 of the whole volume, one stream on one core, holes included.

A new file is written under a temporary name beside TARGET and renamed to it only when
complete, so an interrupted restore never leaves a TARGET that looks restored; on failure the
temporary file is removed (a killed process leaves `.TARGET.bakfs-partial`, which the next
restore to TARGET replaces). An existing file or a block device is written in place.

Async on trio; blocking work through `bakfs.threads`. Knows nothing of FUSE or of the
index's layout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Callable
from typing import Any

import trio

from bakfs.catalog.index import BackupRecord
from bakfs.cinder.extents import Digests, differing, zero_digests
from bakfs.config import Config
from bakfs.errors import BakfsError, IntegrityError, TargetError
from bakfs.read.compare import fetch_sha256file
from bakfs.read.engine import Engine, open_engine
from bakfs.read.target import WINDOW, ZERO_WINDOW, Target, open_target
from bakfs.store.base import ObjectStore
from bakfs.threads import plain_errors

QUEUE_DEPTH = 3
ZERO_RUN_BLOCKS = 4096
_ZEROS = bytes(ZERO_WINDOW)

Parts = list[memoryview | int]


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
    sparse: bool
    checked: bool  # every block compared with the `_sha256file`
    checked_blocks: int
    sha256: str | None  # of the whole volume, when asked

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _BlockCheck:
    """Compares restored windows with the backup's `_sha256file`, block by block."""

    def __init__(self, expected: Digests, block_size: int, size: int) -> None:
        blocks = -(-size // block_size)
        if len(expected) != blocks:
            raise IntegrityError(f"the _sha256file lists {len(expected)} blocks; the volume "
                                 f"of {size} bytes has {blocks}")
        self.expected = expected
        self.block_size = block_size
        self.size = size
        self.blocks = 0
        self.bad: list[int] = []
        self._zero = zero_digests(block_size, block_size)

    def window(self, offset: int, parts: Parts) -> tuple[int, list[int]]:
        """(blocks checked, blocks that differ) of one window (CPU work, any thread)."""
        block = self.block_size
        if offset % block:
            raise ValueError("windows start on a block boundary")
        first = offset // block
        bad = []
        count = 0
        position = 0
        buffer = bytearray()
        for part in parts:
            length = part if isinstance(part, int) else len(part)
            view = None if isinstance(part, int) else memoryview(part)
            done = 0
            while done < length:
                index = first + (position + done) // block
                inside = (position + done) % block
                if inside == 0 and not buffer:
                    whole = min((length - done) // block, self.size // block - index)
                    if whole > 1:  # a run of whole blocks: zeros compared 4096 digests at
                        # a time, data hashed in one call (cinder.blockhash: no GIL)
                        count += whole
                        bad += (self._zero_run(index, whole) if view is None else
                                self.expected.mismatched(index, view[done:done + whole * block],
                                                         block))
                        done += whole * block
                        continue
                take = min(length - done, block - inside)
                end_of_block = min(block, self.size - index * block)
                if inside == 0 and take == end_of_block and not buffer:
                    digest = (self._zero if view is None and take == block else
                              hashlib.sha256(bytes(take) if view is None
                                             else view[done:done + take]).digest())
                    count += 1
                    if digest != self.expected[index]:
                        bad.append(index)
                else:  # a block split across parts: gathered, then hashed
                    buffer += bytes(take) if view is None else view[done:done + take]
                    if inside + take == end_of_block:
                        count += 1
                        if hashlib.sha256(buffer).digest() != self.expected[index]:
                            bad.append(index)
                        buffer.clear()
                done += take
            position += length
        return count, bad

    def _zero_run(self, first: int, count: int) -> list[int]:
        """The blocks of [first, first + count) whose recorded digest is not the zero
        block's."""
        bad = []
        for start in range(first, first + count, ZERO_RUN_BLOCKS):
            n = min(ZERO_RUN_BLOCKS, first + count - start)
            bad += [start + i for i in differing(self.expected.block_range(start, n),
                                                 self._zero * n)]
        return bad


def _hash_parts(digest: Any, parts: Parts) -> None:
    zeros = memoryview(_ZEROS)
    for part in parts:
        if isinstance(part, int):
            while part:
                n = min(part, len(zeros))
                digest.update(zeros[:n])
                part -= n
        else:
            digest.update(part)


async def restore(engine: Engine, backup_id: str, target_path: str,
                  on_progress: Callable[[int], None] | None = None, *,
                  check: bool = False, sha256: bool = False) -> RestoreResult:
    """Restore one backup to `target_path` with a running engine; `on_progress` is told the
    bytes done so far."""
    started = time.monotonic()
    record = await engine.catalog.find(backup_id)
    size = record.size
    bridge = engine.bridge
    fetches0 = engine.cache.stats.fetches
    fetched0 = engine.cache.stats.fetched_bytes
    hits0 = engine.cache.stats.memory_hits + engine.cache.stats.disk_hits
    checker = await _checker(engine, record) if check else None
    target = await bridge.run_disk(open_target, target_path, size)
    digest = hashlib.sha256() if sha256 else None
    written = 0
    done = 0
    ok = False
    Item = tuple[int, Parts]
    write_send, write_receive = trio.open_memory_channel[Item](QUEUE_DEPTH)
    hash_send, hash_receive = trio.open_memory_channel[Item](QUEUE_DEPTH)
    hashing = checker is not None or digest is not None

    async def reader() -> None:
        async with write_send, hash_send:
            offset = 0
            stream = object()
            while offset < size:
                if target.sparse:  # a hole of any size is one step: nothing to write
                    run = await engine.skip_zeros(record, offset, stream, align=WINDOW)
                    if run:
                        await write_send.send((offset, [run]))
                        if hashing:
                            await hash_send.send((offset, [run]))
                        offset += run
                        continue
                parts = await engine.read_parts(record, offset, min(WINDOW, size - offset),
                                                stream=stream)
                length = sum(p if isinstance(p, int) else len(p) for p in parts)
                if not length:
                    raise BakfsError(f"backup {backup_id} ended at {offset} of {size} bytes")
                await write_send.send((offset, parts))
                if hashing:
                    await hash_send.send((offset, parts))
                offset += length

    async def writer() -> None:
        nonlocal written, done
        async with write_receive:
            async for offset, parts in write_receive:
                written += await _write(target, offset, parts, bridge)
                done = offset + sum(p if isinstance(p, int) else len(p) for p in parts)
                if on_progress is not None:
                    on_progress(done)

    async def hasher() -> None:
        async with hash_receive, trio.open_nursery() as checks:
            limit = trio.Semaphore(max(1, os.cpu_count() or 1))
            async for offset, parts in hash_receive:
                if digest is not None:
                    await bridge.run_cpu(_hash_parts, digest, parts)
                if checker is not None:
                    await limit.acquire()
                    checks.start_soon(_check_window, checker, offset, parts, bridge, limit)

    try:
        with plain_errors():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                nursery.start_soon(writer)
                if hashing:
                    nursery.start_soon(hasher)
        if checker is not None and checker.bad:
            shown = ", ".join(f"{b} (offset {b * checker.block_size})"
                              for b in checker.bad[:10])
            raise IntegrityError(f"backup {backup_id}: {len(checker.bad)} restored blocks "
                                 f"differ from its _sha256file: {shown}"
                                 + (" ..." if len(checker.bad) > 10 else ""))
        await bridge.run_disk(target.finish, size)
        ok = True
    except OSError as exc:
        raise TargetError(f"cannot write {target_path}: {exc.strerror or exc}") from None
    finally:
        await bridge.run_disk(target.close, ok)
    seconds = max(time.monotonic() - started, 1e-9)
    stats = engine.cache.stats
    return RestoreResult(
        backup_id=backup_id, target=target_path, bytes=size, written_bytes=written,
        seconds=round(seconds, 3), mb_per_s=round(size / seconds / 1e6, 1),
        objects_fetched=stats.fetches - fetches0, fetched_bytes=stats.fetched_bytes - fetched0,
        cache_hits=stats.memory_hits + stats.disk_hits - hits0, sparse=target.sparse,
        checked=checker is not None, checked_blocks=checker.blocks if checker else 0,
        sha256=digest.hexdigest() if digest is not None else None)


async def _write(target: Target, offset: int, parts: Parts, bridge: Any) -> int:
    if target.sparse and all(isinstance(p, int) for p in parts):
        return 0  # a hole of a sparse target: nothing to write, nothing to touch
    written: int = await bridge.run_disk(target.write, offset, parts)
    return written


async def _check_window(checker: _BlockCheck, offset: int, parts: Parts, bridge: Any,
                        limit: trio.Semaphore) -> None:
    try:
        count, bad = await bridge.run_cpu(checker.window, offset, parts)
        checker.blocks += count
        checker.bad += bad
    finally:
        limit.release()


async def _checker(engine: Engine, record: BackupRecord) -> _BlockCheck:
    sha = await fetch_sha256file(engine.catalog, record)
    if WINDOW % sha.chunk_size:
        raise BakfsError(f"backup {record.backup_id} tracks {sha.chunk_size}-byte blocks, "
                         f"which do not divide the restore's {WINDOW}-byte windows")
    return _BlockCheck(sha.sha256s, sha.chunk_size, record.size)


async def restore_with(config: Config, backup_id: str, target: str, *,
                       store: ObjectStore | None = None,
                       on_start: Callable[[int], Callable[[int], None] | None] | None = None,
                       check: bool = False, sha256: bool = False) -> RestoreResult:
    """Open an engine for `config` and restore. `on_start(volume size)` may return the
    progress callback (the CLI's bar)."""
    async with open_engine(config, store, fill=False) as engine:
        record = await engine.catalog.find(backup_id)
        progress = on_start(record.size) if on_start is not None else None
        return await restore(engine, backup_id, target, progress, check=check, sha256=sha256)

