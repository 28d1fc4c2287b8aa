"""The one bridge between trio and blocking code: every call that blocks (boto3 and the other
stores, LMDB, decompression and hashing, file I/O) leaves the trio thread through here.

Each kind of work has its own named `trio.CapacityLimiter`, so a slow store cannot starve
index lookups and decompression cannot use more threads than there are CPUs:

    s3     `s3.max_pool_connections` threads: the same N as botocore's connection pool, so no
           thread ever queues inside urllib3 and every thread returns within the S3 timeout
    cpu    `os.cpu_count()` threads: zstd/zlib/bz2, md5 and sha256 release the GIL
    index  a few threads for LMDB reads and writes (writes serialise inside LMDB)
    disk   cache and output files

Functions run with `abandon_on_cancel=False`: a cancelled caller waits for the thread, so a
side effect (a write, a committed transaction) is never left half-observed.

This module knows nothing of what the functions do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import TypeVar

import trio

from bakfs.config import Config

T = TypeVar("T")

INDEX_THREADS = 2
DISK_THREADS = 4


@dataclasses.dataclass(frozen=True)
class Limiters:
    """The named limiters of one engine. Make them inside `trio.run` (a limiter belongs to
    the run that first uses it)."""

    s3: trio.CapacityLimiter
    cpu: trio.CapacityLimiter
    index: trio.CapacityLimiter
    disk: trio.CapacityLimiter

    @classmethod
    def create(cls, s3_threads: int = 10, cpu_threads: int | None = None,
               index_threads: int = INDEX_THREADS,
               disk_threads: int = DISK_THREADS) -> Limiters:
        return cls(
            s3=trio.CapacityLimiter(max(1, s3_threads)),
            cpu=trio.CapacityLimiter(max(1, cpu_threads or os.cpu_count() or 1)),
            index=trio.CapacityLimiter(max(1, index_threads)),
            disk=trio.CapacityLimiter(max(1, disk_threads)),
        )

    @classmethod
    def from_config(cls, config: Config) -> Limiters:
        return cls.create(s3_threads=config.s3.max_pool_connections)


class Bridge:
    """`await bridge.run_s3(store.get, key)` and friends: run a blocking function in a worker
    thread under the limiter of its kind and return its result (or raise its exception)."""

    def __init__(self, limiters: Limiters) -> None:
        self.limiters = limiters

    @classmethod
    def from_config(cls, config: Config) -> Bridge:
        return cls(Limiters.from_config(config))

    async def run_s3(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiters.s3)

    async def run_cpu(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiters.cpu)

    async def run_index(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiters.index)

    async def run_disk(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiters.disk)


@contextlib.contextmanager
def plain_errors() -> Iterator[None]:
    """Around a nursery: re-raise a lone exception (or the first bakfs error) out of the
    exception group trio wraps it in, so callers catch `bakfs.errors` classes as such."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        from bakfs.errors import BakfsError

        chosen = next((e for e in leaves if isinstance(e, BakfsError)), None)
        if chosen is None and len(leaves) == 1:
            chosen = leaves[0]
        if chosen is None:
            raise
        raise chosen  # noqa: B904 (the group stays attached as the context)


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
