"""Seeded, VM-like volume images for the demo, the tests and the benchmark.

An image is a sequence of 1 MiB regions, each all zeros, text-like (compressible) or random
(incompressible) in roughly equal thirds, like a used disk. The same seed always gives the
same bytes. `mutate` then changes a given share of blocks in clustered runs, as an
incremental day of writes does.
"""

from __future__ import annotations

import random
from pathlib import Path

REGION = 1 << 20
_WORDS = (
    "volume", "backup", "chunk", "object", "cinder", "block", "sector", "inode", "extent",
    "journal", "superblock", "kernel", "page", "cache", "write", "read", "sync", "mount",
    "lvm", "partition", "table", "boot", "loader", "grub", "config", "log", "entry", "error",
    "warning", "info", "debug", "service", "daemon", "socket", "port",
)


def _text_pool(rng: random.Random) -> bytes:
    lines = []
    size = 0
    while size < 2 * REGION:
        line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14))) + "\n"
        lines.append(line)
        size += len(line)
    return "".join(lines).encode()


def region(rng: random.Random, pool: bytes, length: int) -> bytes:
    """One region's bytes: zeros, text or random."""
    kind = rng.randrange(3)
    if kind == 0:
        return bytes(length)
    if kind == 1:
        start = rng.randrange(len(pool) - length)
        return pool[start:start + length]
    return rng.randbytes(length)


def generate(path: Path, size: int, seed: int = 1) -> None:
    """Write a `size`-byte image to `path` (zero regions left as holes)."""
    rng = random.Random(seed)
    pool = _text_pool(rng)
    with open(path, "wb") as f:
        f.truncate(size)
        offset = 0
        while offset < size:
            length = min(REGION, size - offset)
            data = region(rng, pool, length)
            if data.count(0) != length:
                f.seek(offset)
                f.write(data)
            offset += length


def mutate(path: Path, share: float, seed: int = 2, block_size: int = 32768,
           run_blocks: int = 16) -> int:
    """Overwrite about `share` of the image's blocks in runs of `run_blocks` blocks, some runs
    with zeros (a freed region), the rest with random bytes. Returns bytes changed."""
    rng = random.Random(seed)
    size = path.stat().st_size
    blocks = max(1, size // block_size)
    runs = max(1, round(blocks * share / run_blocks))
    changed = 0
    with open(path, "r+b") as f:
        for _ in range(runs):
            start = rng.randrange(blocks) * block_size
            length = min(run_blocks * block_size, size - start)
            f.seek(start)
            f.write(bytes(length) if rng.random() < 0.2 else rng.randbytes(length))
            changed += length
    return changed
