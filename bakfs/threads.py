"""The one door to worker threads: every call that blocks (boto3 and the other stores, LMDB,
decompression and hashing, file I/O, /proc) leaves the trio thread through a `Bridge`, and
blocking code that wants threads of its own (`ls`, `verify`, `gc`, dsmc's hashing) takes them
from `parallel_map` and `Background`. No other module starts a thread.

Each kind of work on trio has its own named `trio.CapacityLimiter`, so a slow store cannot
starve index lookups and decompression cannot use more threads than there are CPUs:

    s3      `s3.max_pool_connections` threads: the same N as botocore's connection pool, so no
            thread ever queues inside urllib3 and every thread returns within the S3 timeout
    cpu     `os.cpu_count()` threads: zstd/zlib/bz2, md5 and sha256 release the GIL
    index   a few threads for LMDB reads and writes (writes serialise inside LMDB)
    disk    cache, staging and output files, /proc
    source  one thread reading a backup's source (a pipe or a hung device may never return,
            so a cancelled caller abandons it)

Functions run with `abandon_on_cancel=False` (except `run_source`): a cancelled caller waits
for the thread, so a side effect (a write, a committed transaction) is never left
half-observed.

This module knows nothing of what the functions do.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Generic, TypeVar

from bakfs.config import Config
from bakfs.errors import BakfsError

if TYPE_CHECKING:
    import trio

T = TypeVar("T")
R = TypeVar("R")


def _trio() -> ModuleType:
    # lazy: the mount's start opens the store in a `Background` thread before the FUSE side
    # is imported, and blocking commands use `parallel_map`; importing trio first would put
    # 60-140 ms (measured, cold) before that thread starts
    import trio

    return trio

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
    source: trio.CapacityLimiter

    @classmethod
    def create(cls, s3_threads: int = 10, cpu_threads: int | None = None,
               index_threads: int = INDEX_THREADS,
               disk_threads: int = DISK_THREADS) -> Limiters:
        limiter = _trio().CapacityLimiter
        return cls(
            s3=limiter(max(1, s3_threads)),
            cpu=limiter(max(1, cpu_threads or os.cpu_count() or 1)),
            index=limiter(max(1, index_threads)),
            disk=limiter(max(1, disk_threads)),
            source=limiter(1),
        )

    @classmethod
    def from_config(cls, config: Config) -> Limiters:
        return cls.create(s3_threads=config.s3.max_pool_connections)


class Bridge:
    """`await bridge.run_s3(store.get, key)` and friends: run a blocking function in a worker
    thread under the limiter of its kind and return its result (or raise its exception)."""

    def __init__(self, limiters: Limiters) -> None:
        self.limiters = limiters
        self._run = _trio().to_thread.run_sync

    @classmethod
    def create(cls, s3_threads: int = 10) -> Bridge:
        return cls(Limiters.create(s3_threads=s3_threads))

    @classmethod
    def from_config(cls, config: Config) -> Bridge:
        return cls(Limiters.from_config(config))

    async def run_s3(self, fn: Callable[..., T], *args: object) -> T:
        return await self._run(fn, *args, limiter=self.limiters.s3)

    async def run_cpu(self, fn: Callable[..., T], *args: object) -> T:
        return await self._run(fn, *args, limiter=self.limiters.cpu)

    async def run_index(self, fn: Callable[..., T], *args: object) -> T:
        return await self._run(fn, *args, limiter=self.limiters.index)

    async def run_disk(self, fn: Callable[..., T], *args: object) -> T:
        return await self._run(fn, *args, limiter=self.limiters.disk)

    async def run_source(self, fn: Callable[..., T], *args: object) -> T:
        """A read of a backup's source: abandoned (left to finish on its own) when the caller
        is cancelled, since it has no side effect and may never return."""
        return await self._run(fn, *args, limiter=self.limiters.source,
                               abandon_on_cancel=True)


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 8) -> list[R]:
    """`[fn(item) for item in items]` in up to `workers` threads, in order (blocking code)."""
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(fn, items))


class Background(Generic[T]):
    """One blocking call running in a thread of its own while the caller goes on; `result()`
    waits for it and returns its value or raises its exception."""

    def __init__(self, fn: Callable[[], T], name: str) -> None:
        self._future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self.thread = threading.Thread(target=self._run, args=(fn,), name=name, daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], T]) -> None:
        try:
            self._future.set_result(fn())
        except BaseException as exc:  # handed to whoever asks for the result
            self._future.set_exception(exc)

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> T:
        return self._future.result(timeout)


@contextlib.contextmanager
def plain_errors() -> Iterator[None]:
    """Around a nursery: re-raise a lone exception (or the first bakfs error) out of the
    exception group trio wraps it in, so callers catch `bakfs.errors` classes as such."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
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
