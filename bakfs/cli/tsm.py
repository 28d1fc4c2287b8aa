"""`bakfs tsm backup|ls|restore|delete` and `bakfs stage`: backups kept in IBM Spectrum
Protect, and staging them for reading."""

from __future__ import annotations

import argparse
import json
import sys
import uuid

from bakfs.cinder import naming
from bakfs.cli.progress import Phases, human_bytes
from bakfs.config import Config
from bakfs.errors import BakfsError, FormatError
from bakfs.tsm import operations


def run(args: argparse.Namespace, config: Config) -> int:
    if args.command == "stage":
        return stage(config, args.backup_id, as_json=args.json, mount=args.mount)
    if args.tsm_command == "backup":
        return backup(config, args.source, args.volume, name=args.name,
                      description=args.description, as_json=args.json)
    if args.tsm_command == "ls":
        return list_backups(config, args.volume, args.json)
    if args.tsm_command == "restore":
        return restore(config, args.backup_id, args.target)
    return delete(config, args.backup_id)


def backup(config: Config, source: str, volume_id: str, *, name: str | None,
           description: str | None, as_json: bool) -> int:
    try:
        naming.validate_id("volume", volume_id)
    except FormatError as exc:
        raise BakfsError(f"--volume: {exc}") from None
    backup_id = str(uuid.uuid4())
    if not as_json:
        print(f"TSM backup {backup_id} of volume {volume_id} from {source} ...",
              file=sys.stderr)
    record, seconds = operations.backup_to_tsm(config, source, volume_id, backup_id,
                                               name=name, description=description)
    if as_json:
        print(json.dumps({**record.as_dict(), "seconds": round(seconds, 3)}, indent=2))
    else:
        print(f"TSM backup {backup_id} complete: {record.mode} mode, "
              f"{human_bytes(record.size)} ({record.size} bytes), sha256 {record.sha256[:16]}…,"
              f" in {seconds:.1f} s")
    return 0


def list_backups(config: Config, volume_id: str | None, as_json: bool) -> int:
    records = operations.list_tsm(config, volume_id)
    if as_json:
        print(json.dumps([r.as_dict() for r in records], indent=2))
        return 0
    if not records:
        print("no TSM backups" + (f" for volume {volume_id}" if volume_id else ""))
        return 0
    volume = None
    for r in records:
        if r.volume_id != volume:
            volume = r.volume_id
            print(f"volume {volume}")
            print(f"  {'BACKUP':<36}  {'CREATED (UTC)':<19}  {'MODE':<5}  {'SIZE':>10}  "
                  "TSM OBJECT")
        print(f"  {r.backup_id:<36}  {r.created_at.strftime('%Y-%m-%d %H:%M:%S'):<19}  "
              f"{r.mode:<5}  {human_bytes(r.size):>10}  {r.path}")
    return 0


def delete(config: Config, backup_id: str) -> int:
    record, problem = operations.delete_tsm(config, backup_id)
    if problem is not None:
        print(f"warning: the TSM object {record.path} could not be deleted: {problem}",
              file=sys.stderr)
    print(f"deleted TSM backup {backup_id}")
    return 0


def restore(config: Config, backup_id: str, target: str) -> int:
    record, written, seconds = operations.restore_tsm(config, backup_id, target)
    print(f"restored TSM backup {backup_id} to {written}: {record.size} bytes, sha256 "
          f"verified, in {seconds:.1f} s")
    return 0


def stage(config: Config, backup_id: str, *, as_json: bool, mount: str | None = None) -> int:
    with Phases(config.s3.enable_progress_timer) as phases:
        def on_start(size: int) -> operations.Progress:
            return phases.start(f"stage {backup_id[:8]}", size).update_to

        staged = operations.stage(config, backup_id, mount=mount, on_start=on_start)
    if as_json:
        print(json.dumps(staged.details, indent=2))
    elif mount is not None:
        print(f"staged TSM backup {backup_id} through {mount} ({human_bytes(staged.bytes)}, "
              f"{staged.state})")
    else:
        print(f"staged TSM backup {backup_id}: {staged.record.size} bytes in {staged.path}")
    return 0
