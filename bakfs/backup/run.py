"""`bakfs backup`'s work: plan the backup, take the volume's lease, stream the source through
the sink, commit, and say what was done. SIGTERM and Ctrl-C abandon the backup cleanly:
nothing is committed and its objects are removed.

`backup_source` is blocking (it runs trio inside); the CLI prints its summary.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
from collections.abc import Callable
from typing import Any

import trio

from bakfs.backup.plan import BackupPlan, ParentCandidate, named_parent, newest_parent, plan_backup
from bakfs.backup.sink import BackupStats, run_backup_stream
from bakfs.backup.source import Source, read_chunks
from bakfs.catalog.discovery import BackupRef
from bakfs.catalog.leases import VolumeLease
from bakfs.config import Config
from bakfs.errors import BakfsError
from bakfs.store import open_store
from bakfs.store.base import ObjectStore
from bakfs.threads import Bridge

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BackupSummary:
    """What `bakfs backup` made."""

    ref: BackupRef
    plan: BackupPlan
    reason: str
    stats: dict[str, float | int]

    def as_dict(self) -> dict[str, Any]:
        return {"backup_id": self.ref.backup_id, "volume_id": self.plan.volume_id,
                "parent_id": self.plan.parent.backup_id if self.plan.parent else None,
                "kind": "incremental" if self.plan.parent else "full", "reason": self.reason,
                "prefix": str(self.ref.prefix), **self.stats}


def backup_source(config: Config, source: Source, volume_id: str, *, parent_id: str | None,
                  full: bool, name: str | None, description: str | None,
                  on_plan: Callable[[BackupPlan, str], None] | None = None,
                  on_progress: Callable[[BackupStats], None] | None = None) -> BackupSummary:
    """Back `source` up as a new backup of `volume_id`; `on_plan` hears the plan and why,
    `on_progress` the counters as the backup goes."""
    store = open_store(config)
    try:
        store.ensure_bucket()
        parent: ParentCandidate | None = None
        if parent_id is not None:
            parent = named_parent(store, volume_id, parent_id)
        elif not full:
            parent = newest_parent(store, volume_id)
        plan, reason = plan_backup(store, config.s3, volume_id, source.size, parent=parent,
                                   parent_named=parent_id is not None, full=full, name=name,
                                   description=description)
        log.info("%s", reason)
        if on_plan is not None:
            on_plan(plan, reason)
        try:
            ref, stats = trio.run(stream_backup, store, plan, source, on_progress,
                                  restrict_keyboard_interrupt_to_checkpoints=True)
        finally:
            if plan.parent_hashes is not None:
                plan.parent_hashes.close()  # its spill file
    finally:
        store.close()
    return BackupSummary(ref, plan, reason, stats)


async def stream_backup(store: ObjectStore, plan: BackupPlan, source: Source,
                        on_progress: Callable[[BackupStats], None] | None = None
                        ) -> tuple[BackupRef, dict[str, float | int]]:
    """Take the lease, feed the sink from the source, commit."""
    bridge = Bridge.create(plan.options.max_pool_connections)
    lease = VolumeLease(store, plan.volume_id, plan.backup_id)
    await bridge.run_s3(lease.acquire)
    # whole windows per read, so the sink takes them without copying
    read_size = plan.options.object_size * max(1, (4 << 20) // plan.options.object_size)
    result: tuple[BackupRef, BackupStats] | None = None
    async with trio.open_nursery() as nursery:
        body = trio.CancelScope()
        nursery.start_soon(_cancel_on_sigterm, body)
        with body:
            chunks = read_chunks(source, bridge, read_size, plan.options.object_size)
            result = await run_backup_stream(store, plan, chunks, lease, bridge=bridge,
                                             on_progress=on_progress)
        nursery.cancel_scope.cancel()
    if result is None:
        raise BakfsError(f"interrupted by SIGTERM: backup {plan.backup_id} abandoned, "
                         "nothing was committed")
    return result[0], result[1].as_dict()


async def _cancel_on_sigterm(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            log.warning("SIGTERM: abandoning the backup")
            scope.cancel()
            return
