"""Is this device (or image file) that backup? The target is hashed block by block with the
backup's block size and compared with its `_sha256file`, so the answer costs one read of the
target and one small GET, never a byte of the backup's data.

The read runs in a disk thread a window at a time while every core hashes the windows read
before (`cinder.blockhash` releases the GIL once per window), so the target is read at disk
speed. Differing blocks
come back as merged runs. `bakfs verify-device` reports them; `bakfs.read.delta` fetches and
writes just those.

Async on trio; blocking work through `bakfs.threads`. Knows nothing of FUSE.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import stat
import time
from collections.abc import Callable
from typing import Any

import trio

from bakfs.catalog.discovery import BackupRef, load_sha256file
from bakfs.catalog.front import Catalog, open_catalog
from bakfs.catalog.index import BackupRecord
from bakfs.cinder import naming
from bakfs.cinder.blockhash import sha256_blocks
from bakfs.cinder.extents import DIGEST_SIZE, Digests, differing
from bakfs.cinder.metadata import Sha256File
from bakfs.config import Config
from bakfs.devices import claim_device
from bakfs.errors import BadMetadata, TargetError
from bakfs.store import open_store, store_identity
from bakfs.store.base import ObjectStore
from bakfs.threads import Bridge, plain_errors

WINDOW = 8 << 20  # bytes read (and hashed by one thread) at a time, rounded to whole blocks

Runs = list[tuple[int, int]]  # (first block, number of blocks), ascending, not touching


@dataclasses.dataclass
class DeviceTarget:
    """An open target of a comparison or a delta restore."""

    path: str
    fd: int
    size: int  # bytes it holds now
    is_device: bool

    def close(self) -> None:
        os.close(self.fd)


def open_device_target(path: str, *, writable: bool) -> DeviceTarget:
    """Open an existing regular file or block device. A block device opened for writing is
    claimed exclusively (`bakfs.devices`), so one that is mounted or held by another program is
    refused instead of being changed under its user."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise TargetError(f"{path} does not exist") from None
    except OSError as exc:
        raise TargetError(f"cannot use {path}: {exc.strerror}") from None
    is_device = stat.S_ISBLK(st.st_mode)
    if not is_device and not stat.S_ISREG(st.st_mode):
        raise TargetError(f"{path} is neither a regular file nor a block device")
    if writable and is_device:
        fd = claim_device(path, os.O_RDWR)
    else:
        try:
            fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        except OSError as exc:
            raise TargetError(f"cannot open {path}: {exc.strerror}") from None
    size = os.lseek(fd, 0, os.SEEK_END) if is_device else st.st_size
    return DeviceTarget(path, fd, size, is_device)


@dataclasses.dataclass
class Comparison:
    """What a comparison found. `runs` are the blocks that differ: blocks whose bytes hash
    differently, and blocks the target does not hold whole."""

    backup_id: str
    target: str
    size: int  # the volume's
    target_size: int
    is_device: bool
    block_size: int
    blocks: int
    runs: Runs
    seconds: float

    @property
    def size_matches(self) -> bool:
        """A file must have the volume's size; a device may be larger (its tail is not part
        of the volume, as with `bakfs restore`)."""
        return self.target_size == self.size or (self.is_device and self.target_size > self.size)

    @property
    def identical(self) -> bool:
        return self.size_matches and not self.runs

    def ranges(self) -> list[tuple[int, int]]:
        """The differing byte ranges of the volume: (offset, length)."""
        bs = self.block_size
        return [(first * bs, min((first + count) * bs, self.size) - first * bs)
                for first, count in self.runs]

    @property
    def differing_blocks(self) -> int:
        return sum(count for _first, count in self.runs)

    @property
    def differing_bytes(self) -> int:
        return sum(length for _offset, length in self.ranges())

    def to_json(self) -> dict[str, Any]:
        seconds = max(self.seconds, 1e-9)
        compared = min(self.size, self.target_size)
        return {"backup_id": self.backup_id, "target": self.target, "identical": self.identical,
                "size": self.size, "target_size": self.target_size,
                "size_matches": self.size_matches, "block_size": self.block_size,
                "blocks": self.blocks, "differing_blocks": self.differing_blocks,
                "differing_bytes": self.differing_bytes, "ranges": [
                    {"offset": offset, "length": length} for offset, length in self.ranges()],
                "seconds": round(self.seconds, 3),
                "mb_per_s": round(compared / seconds / 1e6, 1)}


def merge_runs(runs: Runs) -> Runs:
    """Sort runs and join those that touch or overlap."""
    merged: Runs = []
    for first, count in sorted(runs):
        if merged and first <= merged[-1][0] + merged[-1][1]:
            last_first, last_count = merged[-1]
            merged[-1] = (last_first, max(last_count, first + count - last_first))
        else:
            merged.append((first, count))
    return merged


def _read_window(fd: int, buffer: bytearray, offset: int, length: int) -> int:
    """Read up to `length` bytes at `offset` into `buffer` (fewer at the end of the target);
    the pages are dropped afterwards so a large target does not flood the page cache."""
    view = memoryview(buffer)
    done = 0
    while done < length:
        n = os.preadv(fd, [view[done:length]], offset + done)
        if n == 0:
            break
        done += n
    if done:
        os.posix_fadvise(fd, offset, done, os.POSIX_FADV_DONTNEED)
    return done


def differing_blocks(data: memoryview, first_block: int, block_size: int, window_length: int,
                     expected: Digests) -> Runs:
    """The runs of differing blocks of one window of the volume (`window_length` bytes from
    block `first_block`) of which `data` was read: blocks not read whole differ."""
    runs: Runs = []
    start: int | None = None
    blocks = -(-window_length // block_size)
    packed = expected.block_range(first_block, blocks)  # one read of a spilled list
    # the blocks read whole, hashed in one call (cinder.blockhash: without the GIL)
    read = window_length if len(data) >= window_length else \
        len(data) - len(data) % block_size
    hashed = sha256_blocks(data[:read], block_size)
    whole = len(hashed) // DIGEST_SIZE
    bad = set(differing(hashed, packed[:len(hashed)]))
    for i in range(blocks):
        index = first_block + i
        same = i < whole and i not in bad
        if not same and start is None:
            start = index
        elif same and start is not None:
            runs.append((start, index - start))
            start = None
    if start is not None:
        runs.append((start, first_block + blocks - start))
    return runs


async def compare(bridge: Bridge, target: DeviceTarget, sha: Sha256File, size: int,
                  backup_id: str,
                  on_progress: Callable[[int], None] | None = None) -> Comparison:
    """Compare the open target with a backup of `size` bytes whose `_sha256file` is `sha`."""
    started = time.monotonic()
    block_size = sha.chunk_size
    blocks = -(-size // block_size)
    if len(sha.sha256s) != blocks:
        raise BadMetadata(f"backup {backup_id}'s _sha256file lists {len(sha.sha256s)} blocks; "
                          f"its volume of {size} bytes has {blocks}")
    window = max(block_size, WINDOW - WINDOW % block_size)
    workers = max(1, bridge.limiters.cpu.total_tokens)
    readable = min(size, target.size)
    free_send, free_receive = trio.open_memory_channel[bytearray](workers + 2)
    for _ in range(workers + 2):
        free_send.send_nowait(bytearray(window))
    full_send, full_receive = trio.open_memory_channel[tuple[int, int, bytearray]](workers)
    runs: Runs = []
    done = 0

    async def reader() -> None:
        async with full_send:
            for offset in range(0, size, window):
                buffer = await free_receive.receive()
                wanted = max(0, min(window, readable - offset))
                n = await bridge.run_disk(_read_window, target.fd, buffer, offset, wanted)
                await full_send.send((offset, n, buffer))

    async def hasher(receive: trio.MemoryReceiveChannel[tuple[int, int, bytearray]]) -> None:
        nonlocal done
        async with receive:
            async for offset, n, buffer in receive:
                length = min(window, size - offset)
                with memoryview(buffer) as view:
                    runs.extend(await bridge.run_cpu(differing_blocks, view[:n],
                                                     offset // block_size, block_size, length,
                                                     sha.sha256s))
                await free_send.send(buffer)
                done += length
                if on_progress is not None:
                    on_progress(done)

    with plain_errors():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            for _ in range(workers):
                nursery.start_soon(hasher, full_receive.clone())
            await full_receive.aclose()
    return Comparison(backup_id, target.path, size, target.size, target.is_device, block_size,
                      blocks, merge_runs(runs), time.monotonic() - started)


async def fetch_sha256file(catalog: Catalog, record: BackupRecord) -> Sha256File:
    """The backup's `_sha256file` (the only object of the backup a comparison reads),
    streamed into a packed digest list that spills to a file when large: a 1 TiB volume's
    document is 2.4 GB of JSON, never held whole."""
    ref = BackupRef(naming.parse_prefix(record.prefix))
    sha = await catalog.bridge.run_s3(load_sha256file, catalog.store, ref)
    if sha.backup_id != record.backup_id:
        raise BadMetadata(f"{ref.sha256file_key} describes backup {sha.backup_id}, not "
                          f"{record.backup_id}")
    return sha


async def verify_device_with(config: Config, backup_id: str, target_path: str, *,
                             store: ObjectStore | None = None,
                             on_start: Callable[[int], Callable[[int], None] | None] | None = None,
                             ) -> Comparison:
    """`bakfs verify-device`: find the backup in the index (listing the store only for an id
    it does not know), GET its `_sha256file`, compare. `on_start(volume size)` may return a
    progress callback."""
    bridge = Bridge.from_config(config)
    own_store = store is None
    if store is None:
        store = await bridge.run_s3(open_store, config)
    try:
        async with open_catalog(config.index.path, store, bridge, fill=False,
                                identity=store_identity(config)) as catalog:
            record = await catalog.find(backup_id)
            sha = await fetch_sha256file(catalog, record)
            target = await bridge.run_disk(functools.partial(open_device_target, target_path,
                                                             writable=False))
            try:
                progress = on_start(record.size) if on_start is not None else None
                return await compare(bridge, target, sha, record.size, backup_id, progress)
            finally:
                await bridge.run_disk(target.close)
    finally:
        if own_store:
            store.close()
