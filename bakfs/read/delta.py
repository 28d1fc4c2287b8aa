"""`bakfs restore --delta`: bring a stale copy of a volume (the volume as it was at an older
backup, a device that changed since) to a backup's content, fetching only the objects whose
blocks differ and writing only those blocks.

The target is compared with the backup's `_sha256file` first (`bakfs.read.compare`); the
differing runs are then read through the read engine, which fetches just the objects under
them (each verified by length and md5), a few runs at a time. Before a block is written its
bytes are hashed once more and checked against the `_sha256file`, so what lands on the
target is what the backup recorded. Nothing else is written, so an interrupted run leaves a
target that the next run finishes: it converges.

Async on trio; blocking work through `bakfs.threads`. Knows nothing of FUSE.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable
from typing import Any

import trio

from bakfs.catalog.index import KIND_DATA, BackupRecord
from bakfs.cinder.extents import Digests
from bakfs.cinder.metadata import ObjectEntry
from bakfs.config import Config
from bakfs.errors import BakfsError, IntegrityError, TargetError
from bakfs.read.compare import (
    Comparison,
    DeviceTarget,
    compare,
    fetch_sha256file,
    open_device_target,
)
from bakfs.read.direct import pwrite_all
from bakfs.read.engine import Engine, open_engine
from bakfs.store.base import ObjectStore
from bakfs.threads import plain_errors

PIECE = 4 << 20  # largest range read and written at once, rounded to whole blocks

# (phase "compare" or "restore", its total bytes) -> the phase's progress callback
OnStart = Callable[[str, int], Callable[[int], None] | None]


@dataclasses.dataclass
class DeltaResult:
    backup_id: str
    target: str
    bytes: int  # the volume's size
    dry_run: bool
    resized_from: int | None  # the file's size before --resize changed it
    differing_blocks: int
    differing_bytes: int
    ranges: list[tuple[int, int]]
    objects_needed: int  # data objects under the differing blocks
    objects_needed_bytes: int  # their plain (uncompressed) size
    objects_fetched: int  # GET from the store (the others came from the cache)
    fetched_bytes: int  # stored bytes of those GETs
    written_bytes: int
    compare_seconds: float
    seconds: float

    def to_json(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["ranges"] = [{"offset": o, "length": n} for o, n in self.ranges]
        return doc


def check_size(target: DeviceTarget, size: int, resize: bool) -> bool:
    """Whether the target can take the volume as it is; False when `resize` must change a
    file's size first. A device may be larger than the volume (its tail is left alone)."""
    if target.is_device:
        if target.size < size:
            raise TargetError(f"{target.path} holds {target.size} bytes; the volume needs "
                              f"{size} (a device cannot be resized: use a larger one)")
        return True
    if target.size == size:
        return True
    if not resize:
        raise TargetError(f"{target.path} holds {target.size} bytes, the backup's volume "
                          f"{size}: a delta restore needs a target of the volume's size "
                          "(--resize makes the file that size; `bakfs restore` without "
                          "--delta writes a new one)")
    return False


def pieces(ranges: list[tuple[int, int]], limit: int) -> list[tuple[int, int]]:
    """The ranges cut into pieces of at most `limit` bytes (a multiple of the block size)."""
    out = []
    for offset, length in ranges:
        for start in range(offset, offset + length, limit):
            out.append((start, min(limit, offset + length - start)))
    return out


def _assemble(parts: list[memoryview | int], offset: int, block_size: int,
              expected: Digests, backup_id: str) -> bytes:
    """Join a piece's parts and check each of its blocks against the `_sha256file`."""
    data = b"".join(bytes(p) if isinstance(p, int) else p for p in parts)
    first = offset // block_size
    if bad := expected.mismatched(first, data, block_size):
        raise IntegrityError(f"backup {backup_id}: block {bad[0]} (offset "
                             f"{offset + (bad[0] - first) * block_size}) as read through its "
                             "chain differs from its _sha256file; nothing more was written")
    return data


async def needed_objects(engine: Engine, comparison: Comparison,
                         record: BackupRecord) -> dict[str, ObjectEntry]:
    """The data objects under the differing ranges (holes and zero objects need none)."""
    needed: dict[str, ObjectEntry] = {}
    for offset, length in comparison.ranges():
        for span in await engine.catalog.spans(record, offset, offset + length):
            if span.kind == KIND_DATA and span.obj is not None:
                needed[span.obj.name] = span.obj
    return needed


async def delta_restore(engine: Engine, backup_id: str, target_path: str, *,
                        dry_run: bool = False, resize: bool = False,
                        on_start: OnStart | None = None) -> DeltaResult:
    """Bring the existing target to the backup's content; see the module docstring."""
    started = time.monotonic()
    bridge = engine.bridge
    record = await engine.catalog.find(backup_id)
    size = record.size
    sha = await fetch_sha256file(engine.catalog, record)
    target = await bridge.run_disk(functools.partial(open_device_target, target_path,
                                                     writable=not dry_run))
    stats = engine.cache.stats
    fetches0, fetched0 = stats.fetches, stats.fetched_bytes
    written = 0
    try:
        resized_from = None
        if not check_size(target, size, resize):
            resized_from = target.size
            if not dry_run:
                await bridge.run_disk(os.ftruncate, target.fd, size)
                target.size = size
        progress = on_start("compare", size) if on_start is not None else None
        comparison = await compare(bridge, target, sha, size, backup_id, progress)
        needed = await needed_objects(engine, comparison, record)
        if not dry_run and comparison.runs:
            progress = (on_start("restore", comparison.differing_bytes)
                        if on_start is not None else None)
            written = await _write_ranges(engine, record, target, comparison, sha.sha256s,
                                          progress)
            await bridge.run_disk(os.fsync, target.fd)
    finally:
        await bridge.run_disk(target.close)
    return DeltaResult(
        backup_id=backup_id, target=target_path, bytes=size, dry_run=dry_run,
        resized_from=resized_from, differing_blocks=comparison.differing_blocks,
        differing_bytes=comparison.differing_bytes, ranges=comparison.ranges(),
        objects_needed=len(needed), objects_needed_bytes=sum(o.length for o in needed.values()),
        objects_fetched=stats.fetches - fetches0, fetched_bytes=stats.fetched_bytes - fetched0,
        written_bytes=written, compare_seconds=round(comparison.seconds, 3),
        seconds=round(time.monotonic() - started, 3))


async def _write_ranges(engine: Engine, record: BackupRecord, target: DeviceTarget,
                        comparison: Comparison, expected: Digests,
                        progress: Callable[[int], None] | None) -> int:
    """Read the differing ranges through the engine and write them, a few pieces at once
    (the cache fetches an object shared by several pieces once)."""
    bridge = engine.bridge
    block_size = comparison.block_size
    limit = max(block_size, PIECE - PIECE % block_size)
    work = pieces(comparison.ranges(), limit)
    written = 0
    send, receive = trio.open_memory_channel[tuple[int, int]](len(work))
    for piece in work:
        send.send_nowait(piece)
    send.close()

    async def worker(receive: trio.MemoryReceiveChannel[tuple[int, int]]) -> None:
        nonlocal written
        async with receive:
            async for offset, length in receive:
                # a stream of its own per piece: no read-ahead past the differing blocks
                parts = await engine.read_parts(record, offset, length, stream=object())
                data = await bridge.run_cpu(_assemble, parts, offset, block_size, expected,
                                            record.backup_id)
                if len(data) != length:
                    raise BakfsError(f"backup {record.backup_id} ended at {offset + len(data)} "
                                     f"of {comparison.size} bytes")
                try:
                    await bridge.run_disk(pwrite_all, target.fd, memoryview(data), offset)
                except OSError as exc:
                    raise TargetError(f"cannot write {target.path} at {offset}: "
                                      f"{exc.strerror or exc}") from None
                written += length
                if progress is not None:
                    progress(written)

    workers = max(1, min(engine.config.s3.max_pool_connections, len(work)))
    with plain_errors():
        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(worker, receive.clone())
            await receive.aclose()
    return written


async def delta_restore_with(config: Config, backup_id: str, target: str, *,
                             store: ObjectStore | None = None, dry_run: bool = False,
                             resize: bool = False, on_start: OnStart | None = None
                             ) -> DeltaResult:
    """Open an engine for `config` and run a delta restore."""
    async with open_engine(config, store, fill=False) as engine:
        return await delta_restore(engine, backup_id, target, dry_run=dry_run, resize=resize,
                                   on_start=on_start)
