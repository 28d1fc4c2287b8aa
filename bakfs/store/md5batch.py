"""MD5 digests of objects in flight, made in batches so that they share SIMD lanes.

One core hashes one buffer at ~0.9 GB/s; the lanes of bakfs.cinder.md5lanes hash up to 16 at
once for little more than the time of one. A sequential reader (dd, a restore) has several
objects fetched ahead of it, and a backup several windows in flight, so their md5s wait here
for company, then go together:

* a job someone waits for now (`urgent`: the object a reader asked for) starts a batch at
  once, with every job queued by then;
* so does a queue that fills the lanes;
* a job nobody hurries goes after `linger` seconds at most (the end of a read-ahead, the last
  windows of a backup).

Batches run in a cpu thread, one at a time. Only for use when there are lanes
(`md5lanes.LANES > 1`): without them, hashing each buffer where it is made is as fast.

Async, on trio.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from bakfs.cinder import md5lanes
from bakfs.errors import BakfsError
from bakfs.threads import Bridge


class Job:
    """Buffers to hash: queued, then done (digests, or error)."""

    __slots__ = ("buffers", "digests", "done", "error", "urgent")

    def __init__(self, buffers: Sequence[md5lanes.Buffer], urgent: bool) -> None:
        self.buffers = buffers
        self.urgent = urgent
        self.digests: list[bytes] = []
        self.error: BakfsError | None = None
        self.done = trio.Event()


class Md5Batches:
    """Batches of md5 jobs over the lanes (module docstring)."""

    def __init__(self, bridge: Bridge, nursery: trio.Nursery, linger: float,
                 lanes: int = md5lanes.LANES) -> None:
        self._bridge = bridge
        self._nursery = nursery
        self._linger = linger
        self._lanes = lanes
        self._queue: list[Job] = []
        self._queued = 0  # buffers in the queue
        self._kick = trio.Event()
        self._running = False
        self.batches = 0  # batches run, and buffers hashed in them: how full the lanes ran
        self.buffers = 0

    def queue(self, buffers: Sequence[md5lanes.Buffer], urgent: bool) -> Job:
        """Queue buffers to hash; `wait` for their digests."""
        job = Job(buffers, urgent)
        self._queue.append(job)
        self._queued += len(buffers)
        if not self._running:
            self._running = True
            self._nursery.start_soon(self._run)
        if urgent or self._queued >= self._lanes:
            self._kick.set()
        return job

    async def wait(self, job: Job) -> list[bytes]:
        """The job's digests, in the order of its buffers."""
        try:
            await job.done.wait()
        except BaseException:
            if job in self._queue:
                self._queue.remove(job)
                self._queued -= len(job.buffers)
            raise
        if job.error is not None:
            raise job.error
        return job.digests

    async def digests(self, buffers: Sequence[md5lanes.Buffer],
                      urgent: bool = False) -> list[bytes]:
        return await self.wait(self.queue(buffers, urgent))

    def hurry(self, job: Job | None) -> None:
        """Someone now waits for this queued job: its batch starts at once."""
        if job is not None and not job.done.is_set():
            job.urgent = True
            self._kick.set()

    def flush(self) -> None:
        """Hash what is queued now, without waiting for more."""
        if self._queue:
            self._kick.set()

    async def _run(self) -> None:
        """Batches while jobs are queued; ends when the queue is empty."""
        try:
            while self._queue:
                if self._queued < self._lanes and not any(j.urgent for j in self._queue):
                    with trio.move_on_after(self._linger):
                        await self._kick.wait()
                self._kick = trio.Event()
                batch, room = [], self._lanes
                while self._queue and (not batch or len(self._queue[0].buffers) <= room):
                    job = self._queue.pop(0)
                    self._queued -= len(job.buffers)
                    room -= len(job.buffers)
                    batch.append(job)
                if batch:
                    await self._hash(batch)
        finally:
            self._running = False
            for job in self._queue:  # cancelled with jobs queued: none is left hanging
                job.error = BakfsError("md5 batch cancelled")
                job.done.set()
            self._queue.clear()
            self._queued = 0

    async def _hash(self, batch: list[Job]) -> None:
        flat = [b for job in batch for b in job.buffers]
        self.batches += 1
        self.buffers += len(flat)
        try:
            digests = await self._bridge.run_cpu(md5lanes.digests, flat)
        except BaseException as exc:  # cancelled, or a bug: no job is left hanging
            for job in batch:
                job.error = BakfsError(f"md5 could not be computed: {type(exc).__name__}: "
                                       f"{exc}")
                job.done.set()
            if isinstance(exc, Exception):
                return
            raise
        at = 0
        for job in batch:
            job.digests = digests[at:at + len(job.buffers)]
            at += len(job.buffers)
            job.done.set()
