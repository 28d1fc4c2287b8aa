"""Restoring a backup's whole volume to a file or a block device through the read engine,
and what it did: bytes, time, throughput, objects fetched, sha256.

The volume is read sequentially in large requests, so the engine's read-ahead fetches the
next objects in parallel; writing and hashing run in their own threads beside the reads
(a memory channel of a few requests in between keeps memory flat). On failure a file this
restore created is removed. The target itself is `bakfs.read.target`.

Async on trio; blocking work through `bakfs.threads`. Knows nothing of FUSE or of the
index's layout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from bakfs.config import Config
from bakfs.errors import BakfsError, TargetError
from bakfs.read.engine import Engine, open_engine
from bakfs.read.target import WINDOW, ZERO_WINDOW, open_target
from bakfs.store.base import ObjectStore
from bakfs.threads import plain_errors

QUEUE_DEPTH = 3
_ZEROS = bytes(ZERO_WINDOW)


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


async def restore(engine: Engine, backup_id: str, target_path: str,
                  on_progress: Callable[[int], None] | None = None) -> RestoreResult:
    """Restore one backup to `target_path` with a running engine; `on_progress` is told the
    bytes done so far."""
    started = time.monotonic()
    record = await engine.catalog.find(backup_id)
    size = record.size
    bridge = engine.bridge
    fetches0 = engine.cache.stats.fetches
    fetched0 = engine.cache.stats.fetched_bytes
    hits0 = engine.cache.stats.memory_hits + engine.cache.stats.disk_hits
    target = await bridge.run_disk(open_target, target_path, size)
    digest = hashlib.sha256()
    written = 0
    done = 0
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
                parts = await engine.read_parts(record, offset, min(WINDOW, size - offset),
                                                stream=stream)
                length = sum(p if isinstance(p, int) else len(p) for p in parts)
                if not length:
                    raise BakfsError(f"backup {backup_id} ended at {offset} of {size} bytes")
                await write_send.send((offset, length, parts))
                await hash_send.send((offset, length, parts))
                offset += length

    async def writer() -> None:
        nonlocal written, done
        async with write_receive:
            async for offset, length, parts in write_receive:
                written += await bridge.run_disk(target.write, offset, parts)
                done += length
                if on_progress is not None:
                    on_progress(done)

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
                       store: ObjectStore | None = None,
                       on_start: Callable[[int], Callable[[int], None] | None] | None = None,
                       ) -> RestoreResult:
    """Open an engine for `config` and restore. `on_start(volume size)` may return the
    progress callback (the CLI's bar)."""
    async with open_engine(config, store) as engine:
        record = await engine.catalog.find(backup_id)
        progress = on_start(record.size) if on_start is not None else None
        return await restore(engine, backup_id, target, progress)
