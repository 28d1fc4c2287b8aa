"""`bakfs ls`, `verify`, `delete`, `gc`, `index` and `export-record`: what is in the store,
and keeping it healthy."""

from __future__ import annotations

import argparse
import json
import sys

import trio

from bakfs.catalog.discovery import find_backup, load_chain
from bakfs.catalog.front import Catalog
from bakfs.catalog.inventory import (
    Listing,
    incomplete,
    listed,
    remove_orphans,
)
from bakfs.catalog.inventory import delete as remove_backup
from bakfs.catalog.sync import RefreshResult, list_store, open_index
from bakfs.cinder import record as cinder_record
from bakfs.cli.progress import human_bytes
from bakfs.config import Config
from bakfs.read.verify import verify
from bakfs.store import describe_store, open_store, store_identity
from bakfs.store.base import ObjectStore
from bakfs.store.opening import OpeningStore
from bakfs.threads import Bridge
from bakfs.tsm.kept import list_and_keep, read_kept
from bakfs.tsm.records import TsmRecord


def run(args: argparse.Namespace, config: Config) -> int:
    if args.command == "ls":
        return list_backups(config, args.volume, show_all=args.all, as_json=args.json,
                            cached=args.cached)
    if args.command == "verify":
        return verify_backup(config, args.backup_id, deep=args.deep)
    if args.command == "delete":
        return delete_backup(config, args.backup_id)
    if args.command == "gc":
        return collect_garbage(config, args.volume, delete=args.delete, as_json=args.json)
    if args.command == "index":
        return index_command(config, args.index_action, as_json=args.json)
    return export_record(config, args.backup_id, as_json=args.json)


def export_record(config: Config, backup_id: str, as_json: bool = False) -> int:
    """Print the `cinder backup-import` arguments for one backup."""
    store = open_store(config)
    try:
        ref = find_backup(store, backup_id)
        chain = load_chain(store, ref)
    finally:
        store.close()
    metadata = chain[-1][1]
    size = chain[0][1].covered_size
    fields = cinder_record.backup_record(metadata, ref.prefix, config.s3.bucket, size)
    url = cinder_record.backup_url(fields)
    if as_json:
        print(json.dumps(fields, indent=2))
    if metadata.parent_id:
        print(f"# import the parent {metadata.parent_id} first", file=sys.stderr)
    print(f"cinder backup-import {cinder_record.S3_BACKUP_SERVICE} {url}")
    return 0


def list_backups(config: Config, volume_id: str | None, show_all: bool, as_json: bool,
                 cached: bool = False) -> int:
    # opened at its first use: `--cached` never imports boto3 (0.1 s)
    store = OpeningStore(lambda: open_store(config), describe_store(config))
    try:
        listing, tsm = trio.run(catalogue, config, store, volume_id, show_all, cached)
    finally:
        store.close()
    backups = listing.backups
    if as_json:
        # an array with one backup per line: json's C encoder does not indent, and the
        # indenting one took 0.08 s of the 1 s that 10,000 backups take
        items = [b.as_dict() for b in backups] + [
            {"backup_id": r.backup_id, "volume_id": r.volume_id, "kind": f"tsm-{r.mode}",
             "complete": True, "size": r.size, "created": r.created_at.isoformat(),
             "name": r.name} for r in tsm]
        print("[" + ",".join("\n  " + json.dumps(item) for item in items)
              + ("\n]" if items else "]"))
        return 0
    for record in tsm:
        print(f"volume {record.volume_id} (TSM): {record.backup_id}  "
              f"{record.created_at:%Y-%m-%d %H:%M:%S}  {record.mode} mode  "
              f"{human_bytes(record.size)}")
    if not backups and not tsm:
        print(f"no backups in {store.description}" + (f" for volume {volume_id}"
                                                      if volume_id else ""))
        return 0
    lines = []
    volume = None
    for b in backups:
        if b.volume_id != volume:
            volume = b.volume_id
            lines.append(f"volume {volume}")
            lines.append(f"  {'BACKUP':<36}  {'STARTED (UTC)':<19}  {'KIND':<11}  {'SIZE':>10}  "
                         f"{'STORED':>10}  {'OBJECTS':>7}  {'CODEC':<9}  PARENT")
        size = human_bytes(b.size) if b.size is not None else "?"
        lines.append(f"  {b.backup_id:<36}  {b.started:%Y-%m-%d %H:%M:%S}  {b.kind:<11}  "
                     f"{size:>10}  {human_bytes(b.stored_bytes):>10}  {b.data_objects:>7}  "
                     f"{','.join(b.codecs) or '-':<9}  {b.parent_id or '-'}")
        if b.error:
            lines.append(f"      cannot read its metadata: {b.error}")
    if listing.stale:
        lines.append(f"(from the local index as of its last refresh; {listing.stale})")
    print("\n".join(lines))
    return 0


async def catalogue(config: Config, store: ObjectStore, volume_id: str | None,
                    show_all: bool, cached: bool) -> tuple[Listing, list[TsmRecord]]:
    """The backups `ls` shows: the index's records and its copy of the TSM records, after
    one listing of the store brought them up to date (only new backups' `_metadata` and
    new TSM records are read), or as they are (`cached`)."""
    bridge = Bridge.from_config(config)
    index = await open_index(config.index.path, bridge, identity=store_identity(config))
    try:
        catalog = Catalog(store, index, bridge)
        refs = []
        stale = None
        kept = await read_kept(catalog)
        tsm = kept or []
        if cached and not index.rebuilt:
            stale = "--cached"
            records = await catalog.list_backups(volume_id)
        else:
            # `ls VOLUME` lists and refreshes that volume only: its keys, not the bucket's
            refs = await list_store(store, index, bridge, volume_id)
            refreshed = await catalog.refresh([r for r in refs if r.complete],
                                              volume_id=volume_id)
            tsm = await list_and_keep(catalog, volume_id, kept)
            records = refreshed.records  # of that volume when one is named
    finally:
        await bridge.run_index(index.close)
    incomplete = [r for r in refs if not r.complete and show_all
                  and (volume_id is None or r.volume_id == volume_id)]
    if volume_id is not None:
        tsm = [r for r in tsm if r.volume_id == volume_id]
    return Listing(listed(records, incomplete), stale), tsm


def verify_backup(config: Config, backup_id: str, deep: bool) -> int:
    store = open_store(config)
    try:
        problems = verify(store, backup_id, deep=deep,
                          report=lambda line: print(line, file=sys.stderr))
    finally:
        store.close()
    for problem in problems:
        print(f"BAD: {problem}")
    if problems:
        print(f"backup {backup_id}: {len(problems)} problems", file=sys.stderr)
        return 1
    print(f"backup {backup_id} is sound" + (" (every block checked)" if deep else ""))
    return 0


def delete_backup(config: Config, backup_id: str) -> int:
    store = open_store(config)
    try:
        count = remove_backup(store, backup_id)
    finally:
        store.close()
    print(f"deleted backup {backup_id} ({count} objects)")
    return 0


def collect_garbage(config: Config, volume_id: str | None, delete: bool, as_json: bool) -> int:
    store = open_store(config)
    try:
        found = incomplete(store, volume_id)
        orphans = [i.orphan for i in found if not i.writing]
        removed = remove_orphans(store, orphans) if delete else 0
    finally:
        store.close()
    writing = [i.orphan for i in found if i.writing]
    if as_json:
        print(json.dumps({"deleted": delete, "orphans": [
            {"backup_id": o.ref.backup_id, "volume_id": o.ref.volume_id,
             "objects": [i.key for i in o.objects], "bytes": o.bytes,
             "stale_lease": o.lease.describe() if o.lease else None} for o in orphans],
            "being_written": [
                {"backup_id": o.ref.backup_id, "volume_id": o.ref.volume_id,
                 "objects": len(o.objects), "lease": o.lease.describe() if o.lease else None}
                for o in writing]}, indent=2))
        return 0
    for orphan in writing:
        print(f"being written: backup {orphan.ref.backup_id} of volume "
              f"{orphan.ref.volume_id}: {len(orphan.objects)} objects so far "
              f"({orphan.lease.describe() if orphan.lease else 'leased'}); left alone")
    for orphan in orphans:
        stale = f" (its {orphan.lease.describe()})" if orphan.lease else ""
        print(f"{'removed' if delete else 'orphan'}: backup {orphan.ref.backup_id} of volume "
              f"{orphan.ref.volume_id}: {len(orphan.objects)} objects, "
              f"{human_bytes(orphan.bytes)}{stale}")
    total = sum(o.bytes for o in orphans)
    if delete:
        print(f"removed {removed} objects ({human_bytes(total)})")
    elif orphans:
        print(f"{len(orphans)} interrupted backups, {human_bytes(total)}; run "
              "`bakfs gc --delete` to remove them")
    else:
        print("no orphans")
    return 0


def index_command(config: Config, action: str, as_json: bool) -> int:
    """`bakfs index refresh|rebuild [--json]`."""

    async def main() -> RefreshResult:
        bridge = Bridge.from_config(config)
        store = open_store(config)
        try:
            index = await open_index(config.index.path, bridge, wipe=action == "rebuild",
                                     identity=store_identity(config))
            try:
                return await Catalog(store, index, bridge).refresh(check=True)
            finally:
                await bridge.run_index(index.close)
        finally:
            store.close()

    result = trio.run(main)
    if as_json:
        doc = {"action": action, "index": str(config.index.path), **result.to_json()}
        print(json.dumps(doc, indent=2))
    else:
        print(f"index {action}: {result.backups} backups of {result.volumes} volumes "
              f"(added {len(result.added)}, removed {len(result.removed)}, "
              f"unreadable {len(result.broken)}) in {result.seconds:.2f} s")
        if result.rebuilt:
            print(f"  rebuilt from nothing: {result.rebuilt}")
        for backup_id, reason in sorted(result.broken.items()):
            print(f"  unreadable {backup_id}: {reason}", file=sys.stderr)
    return 0
