"""The mount's life in the daemon, once `bakfs.mount.launch` has checked the mountpoint,
forked and started opening the store: open the read engine → the tree from the index (a new
index: the store is listed first, and each volume shown as a directory) → pyfuse3.init →
ready → list the store, its TSM records first, or fill a new index from the listing (a
volume whose directory is opened meanwhile is indexed next; a lookup of a name the tree
lacks waits for what would show it; a directory listing for the records only) → serve
until unmounted or SIGTERM/SIGINT → abandon unfinished incoming backups (nothing committed)
→ unmount.

The user-side commands on a running mount are `bakfs.mount.control`.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pyfuse3
import trio

from bakfs.config import Config
from bakfs.errors import BakfsError
from bakfs.mount.fuse_ops import Operations
from bakfs.mount.namespace import Tree
from bakfs.mount.permissions import Permissions
from bakfs.mount.service import MountService
from bakfs.read.engine import open_engine
from bakfs.store.opening import OpeningStore
from bakfs.tsm.operations import make_runner, staging_dir, staging_max_bytes
from bakfs.tsm.staging import StagingManager

log = logging.getLogger(__name__)


def serve(config: Config, store: OpeningStore, mountpoint: Path, fuse_options: list[str],
          notify: Callable[[str], None], permissions: Permissions) -> None:
    """Serve the mount until it is unmounted (or SIGTERM/SIGINT). The store is opening in a
    thread already: with an index that knows the backups, the mount is up before the store
    is (a new index waits for it)."""
    try:
        trio.run(_serve_store, config, store, mountpoint, fuse_options, notify, permissions)
    except BakfsError as exc:
        notify(f"error: {exc}")
        raise
    except BaseException as exc:
        notify(f"error: {type(exc).__name__}: {exc}")
        raise
    finally:
        store.close()


async def _serve_store(config: Config, store: OpeningStore, mountpoint: Path,
                       fuse_options: list[str], notify: Callable[[str], None],
                       permissions: Permissions) -> None:
    async with open_engine(config, store, fill=False) as engine:
        tree = Tree(time.time())
        service = MountService(config, engine, tree)
        # the tree as the index knows it, or, on an index that knows no backup (a new one),
        # the volumes as the store lists them (the store is open then; their backups are
        # indexed once the mount is up). An index that knows some (a first build cut short,
        # a restore's volume) is shown as it is: listing a bucket of large volumes first
        # would keep the mount down for seconds (262,144 keys a TiB)
        await service.show_kept_records()
        if not await engine.catalog.knows_backups():
            await service.list_volumes()
        else:
            await service.refresh(list_store=False)
        store.start()  # a re-mount's tree is shown: now the store (see mount.launch)
        service.mountpoint = mountpoint
        operations = Operations(service, permissions)
        options = set(pyfuse3.default_options)
        options.add("fsname=bakfs")
        options.add("subtype=bakfs")
        options.add("default_permissions")  # the kernel enforces `permissions`
        options.update(fuse_options)
        pyfuse3.init(operations, str(mountpoint), options)
        log.info("mounted %s on %s", service.store.description, mountpoint)
        try:
            async with trio.open_nursery() as nursery:
                service.nursery = nursery
                await _start_staging(service, nursery)
                nursery.start_soon(service.first_listing)
                nursery.start_soon(service.refresh_loop)
                nursery.start_soon(_terminate_on_signal)
                notify("ready")
                await pyfuse3.main()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await service.abandon_all()
            pyfuse3.close(unmount=True)
            log.info("unmounted %s", mountpoint)


async def _start_staging(service: MountService, nursery: trio.Nursery) -> None:
    """The staging area for TSM-held backups. Another process owning it (a second mount, a
    `bakfs stage`) leaves TSM backups listed but unreadable, with the reason in the log."""
    config = service.config
    manager = StagingManager(make_runner(config), staging_dir(config), staging_max_bytes(config),
                             bridge=service.bridge)
    try:
        service.staging.manager = await nursery.start(manager.serve)
    except BakfsError as exc:
        service.staging.error = str(exc)
        log.warning("TSM backups will not be readable: %s", exc)


async def _terminate_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("%s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return
