"""The commands behind the CLI: each takes parsed arguments and the configuration and returns
an exit code. Blocking, plain code; the mount brings trio in later."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from bakfs import config as config_module
from bakfs.config import Config, Secret


def run(args: argparse.Namespace, config: Config) -> int:
    if args.command == "config":
        if args.config_command == "show":
            return config_show(config, as_json=args.json)
        return config_check(config)
    if args.command == "demo":
        from bakfs.demo import run_demo

        return run_demo(config, size=config_module.parse_size(args.size), keep=args.keep,
                        workdir=args.workdir)
    if args.command == "backup":
        from bakfs.backup_cmd import run_backup

        return run_backup(config, args.source, args.volume, parent_id=args.parent,
                          full=args.full, name=args.name, description=args.description,
                          as_json=args.json)
    if args.command == "ls":
        return list_backups(config, args.volume, show_all=args.all, as_json=args.json)
    if args.command == "verify":
        return verify_backup(config, args.backup_id, deep=args.deep)
    if args.command == "delete":
        return delete_backup(config, args.backup_id)
    if args.command == "gc":
        return collect_garbage(config, args.volume, delete=args.delete, as_json=args.json)
    if args.command == "mount":
        from bakfs.mount import run_mount

        options = [o for group in args.fuse_options for o in group.split(",") if o]
        return run_mount(config, args.mountpoint, foreground=args.foreground,
                         fuse_options=options, log_file=args.log)
    if args.command == "umount":
        from bakfs.mount import run_umount

        return run_umount(args.mountpoint, force=args.force)
    if args.command == "refresh":
        from bakfs.mount import run_refresh

        return run_refresh(args.mountpoint)
    if args.command == "restore":
        from bakfs.restore import run_restore

        return run_restore(config, args.backup_id, args.target, as_json=args.json)
    if args.command == "index":
        from bakfs.catalog import run_index_command

        return run_index_command(config, args.index_action, as_json=args.json)
    if args.command == "tsm":
        from bakfs.tsm import commands as tsm

        if args.tsm_command == "backup":
            return tsm.run_tsm_backup(config, args.source, args.volume, name=args.name,
                                      description=args.description, as_json=args.json)
        if args.tsm_command == "ls":
            return tsm.run_tsm_ls(config, args.volume, args.json)
        if args.tsm_command == "restore":
            return tsm.run_tsm_restore(config, args.backup_id, args.target)
        return tsm.run_tsm_delete(config, args.backup_id)
    if args.command == "stage":
        from bakfs.tsm.commands import run_stage

        return run_stage(config, args.backup_id, as_json=args.json, mount=args.mount)
    if args.command == "export-record":
        return export_record(config, args.backup_id, as_json=args.json)
    raise AssertionError(f"unknown command {args.command}")


def _shown(value: Any) -> Any:
    if isinstance(value, Secret):
        return "****"
    return value


def config_show(config: Config, as_json: bool = False) -> int:
    """Every option with its effective value and source; secrets masked."""
    rows = config_module.describe(config)
    if as_json:
        doc = {
            "file": str(config.path) if config.path else None,
            "store": "s3" if config.uses_s3 else "local",
            "options": {info.key: {"value": _shown(value), "source": source, "env": info.env}
                        for info, value, source in rows},
        }
        print(json.dumps(doc, indent=2))
        return 0
    print(f"# configuration file: {config.path or 'none (defaults and environment only)'}")
    print(f"# store in use: {'S3' if config.uses_s3 else 'embedded local store'}")
    section = None
    for info, value, source in rows:
        if info.section != section:
            section = info.section
            print(f"\n[{section}]")
        if value is None:
            line = f"# {info.name} (unset)"
        elif isinstance(value, Secret):
            line = f'{info.name} = "****"'
        else:
            line = f"{info.name} = {json.dumps(value)}"
        print(f"{line:<56} # {source}")
    return 0


def config_check(config: Config) -> int:
    """Open the store, make sure the bucket is there, and list it once."""
    from bakfs.discovery import find_backups
    from bakfs.store import open_store

    store = open_store(config)
    try:
        store.ensure_bucket()
        backups = find_backups(store)
    finally:
        store.close()
    print(f"ok: {store.description} is reachable and holds {len(backups)} complete backups")
    return 0


def export_record(config: Config, backup_id: str, as_json: bool = False) -> int:
    """Print the `cinder backup-import` arguments for one backup."""
    from bakfs.cinder import record
    from bakfs.discovery import find_backup, load_chain
    from bakfs.store import open_store

    store = open_store(config)
    try:
        ref = find_backup(store, backup_id)
        chain = load_chain(store, ref)
    finally:
        store.close()
    metadata = chain[-1][1]
    size = chain[0][1].covered_size
    fields = record.backup_record(metadata, ref.prefix, config.s3.bucket, size)
    url = record.backup_url(fields)
    if as_json:
        print(json.dumps(fields, indent=2))
    if metadata.parent_id:
        print(f"# import the parent {metadata.parent_id} first", file=sys.stderr)
    print(f"cinder backup-import {record.S3_BACKUP_SERVICE} {url}")
    return 0


def list_backups(config: Config, volume_id: str | None, show_all: bool, as_json: bool) -> int:
    from bakfs.inventory import survey
    from bakfs.progress import human_bytes
    from bakfs.store import open_store
    from bakfs.tsm.catalog import list_records

    store = open_store(config)
    try:
        backups = [b for b in survey(store, volume_id) if show_all or b.complete]
        tsm = list_records(store, volume_id)  # backups kept in TSM, listed beside S3 ones
    finally:
        store.close()
    if as_json:
        print(json.dumps([b.as_dict() for b in backups] + [
            {"backup_id": r.backup_id, "volume_id": r.volume_id, "kind": f"tsm-{r.mode}",
             "complete": True, "size": r.size, "created": r.created_at.isoformat(),
             "name": r.name} for r in tsm], indent=2))
        return 0
    for record in tsm:
        print(f"volume {record.volume_id} (TSM): {record.backup_id}  "
              f"{record.created_at:%Y-%m-%d %H:%M:%S}  {record.mode} mode  "
              f"{human_bytes(record.size)}")
    if not backups and not tsm:
        print(f"no backups in {store.description}" + (f" for volume {volume_id}"
                                                      if volume_id else ""))
        return 0
    volume = None
    for b in backups:
        if b.ref.volume_id != volume:
            volume = b.ref.volume_id
            print(f"volume {volume}")
            print(f"  {'BACKUP':<36}  {'STARTED (UTC)':<19}  {'KIND':<11}  {'SIZE':>10}  "
                  f"{'STORED':>10}  {'OBJECTS':>7}  {'CODEC':<9}  PARENT")
        d = b.as_dict()
        size = human_bytes(b.size) if b.size is not None else "?"
        print(f"  {b.ref.backup_id:<36}  {b.ref.started_at:%Y-%m-%d %H:%M:%S}  {b.kind:<11}  "
              f"{size:>10}  {human_bytes(b.stored_bytes):>10}  {d['data_objects']:>7}  "
              f"{','.join(b.codecs) or '-':<9}  {d['parent_id'] or '-'}")
        if b.error:
            print(f"      cannot read its metadata: {b.error}")
    return 0


def verify_backup(config: Config, backup_id: str, deep: bool) -> int:
    from bakfs.inventory import verify
    from bakfs.store import open_store

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
    from bakfs.inventory import delete
    from bakfs.store import open_store

    store = open_store(config)
    try:
        count = delete(store, backup_id)
    finally:
        store.close()
    print(f"deleted backup {backup_id} ({count} objects)")
    return 0


def collect_garbage(config: Config, volume_id: str | None, delete: bool, as_json: bool) -> int:
    from bakfs.inventory import find_orphans, remove_orphans
    from bakfs.progress import human_bytes
    from bakfs.store import open_store

    store = open_store(config)
    try:
        orphans = find_orphans(store, volume_id)
        removed = remove_orphans(store, orphans) if delete else 0
    finally:
        store.close()
    if as_json:
        print(json.dumps({"deleted": delete, "orphans": [
            {"backup_id": o.ref.backup_id, "volume_id": o.ref.volume_id,
             "objects": [i.key for i in o.objects], "bytes": o.bytes} for o in orphans]},
            indent=2))
        return 0
    for orphan in orphans:
        print(f"{'removed' if delete else 'orphan'}: backup {orphan.ref.backup_id} of volume "
              f"{orphan.ref.volume_id}: {len(orphan.objects)} objects, "
              f"{human_bytes(orphan.bytes)}")
    total = sum(o.bytes for o in orphans)
    if delete:
        print(f"removed {removed} objects ({human_bytes(total)})")
    elif orphans:
        print(f"{len(orphans)} interrupted backups, {human_bytes(total)}; run "
              "`bakfs gc --delete` to remove them")
    else:
        print("no orphans")
    return 0
