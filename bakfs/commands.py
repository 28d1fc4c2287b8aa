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
    if args.command == "restore":
        from bakfs.restore import run_restore

        return run_restore(config, args.backup_id, args.target, as_json=args.json)
    if args.command == "index":
        from bakfs.catalog import run_index_command

        return run_index_command(config, args.index_action, as_json=args.json)
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
