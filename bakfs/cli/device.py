"""`bakfs verify-device BACKUP TARGET` and `bakfs restore BACKUP TARGET --delta [--dry-run]
[--resize]`: a device (or image file) against a backup, block by block. A plain `bakfs
restore` is `bakfs.cli.restore`'s.

verify-device exits 0 when the target holds the backup, 1 when it does not and 2 on any
error, so a script can tell "different" from "could not tell".
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import trio

from bakfs.cli import restore as full_restore
from bakfs.cli.progress import Phases, human_bytes
from bakfs.config import Config
from bakfs.errors import BakfsError, ConfigError
from bakfs.read.compare import Comparison, verify_device_with
from bakfs.read.delta import DeltaResult, delta_restore_with

SHOWN_RANGES = 50  # ranges listed for a person; --json lists them all


def run(args: argparse.Namespace, config: Config) -> int:
    if args.command == "verify-device":
        try:
            return verify_device(args, config)
        except BakfsError as exc:
            exc.exit_code = 2  # 1 means "differs"
            raise
    if args.delta:
        return delta(args, config)
    if args.dry_run or args.resize:
        raise ConfigError("--dry-run and --resize go with --delta")
    return full_restore.run(args, config)


def verify_device(args: argparse.Namespace, config: Config) -> int:
    with Phases(config.s3.enable_progress_timer, json_lines=args.json) as phases:
        def on_start(size: int) -> Callable[[int], None]:
            return phases.start("compare", size).update_to

        comparison = trio.run(lambda: verify_device_with(config, args.backup_id, args.target,
                                                         on_start=on_start))
    if args.json:
        print(json.dumps(comparison.to_json(), indent=2))
    else:
        print_comparison(comparison)
    return 0 if comparison.identical else 1


def print_comparison(c: Comparison) -> None:
    doc = c.to_json()
    speed = f"{human_bytes(min(c.size, c.target_size))} in {c.seconds:.2f} s " \
            f"({doc['mb_per_s']} MB/s)"
    for offset, length in c.ranges()[:SHOWN_RANGES]:
        print(f"differs: offset {offset} ({human_bytes(offset)}), {length} bytes "
              f"({human_bytes(length)})")
    if len(c.runs) > SHOWN_RANGES:
        print(f"... and {len(c.runs) - SHOWN_RANGES} more ranges (--json lists them all)")
    if not c.size_matches:
        print(f"size: {c.target} holds {c.target_size} bytes, the volume {c.size}")
    elif c.target_size > c.size:
        print(f"note: the device's last {c.target_size - c.size} bytes are past the volume "
              "and were not compared")
    if c.identical:
        print(f"identical: {c.target} holds backup {c.backup_id} ({c.blocks} blocks of "
              f"{human_bytes(c.block_size)}, {speed})")
    else:
        share = 100 * c.differing_bytes / c.size if c.size else 0.0
        print(f"different: {c.target} differs from backup {c.backup_id} in {len(c.runs)} "
              f"ranges, {c.differing_blocks} of {c.blocks} blocks, "
              f"{human_bytes(c.differing_bytes)} ({share:.2f} %); compared {speed}")


def delta(args: argparse.Namespace, config: Config) -> int:
    with Phases(config.s3.enable_progress_timer, json_lines=args.json) as phases:
        def on_start(phase: str, total: int) -> Callable[[int], None]:
            return phases.start(phase, total).update_to

        result = trio.run(lambda: delta_restore_with(config, args.backup_id, args.target,
                                                     dry_run=args.dry_run, resize=args.resize,
                                                     on_start=on_start))
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print_delta(result)
    return 0


def print_delta(r: DeltaResult) -> None:
    for offset, length in r.ranges[:SHOWN_RANGES]:
        verb = "would write" if r.dry_run else "wrote"
        print(f"{verb}: offset {offset} ({human_bytes(offset)}), {length} bytes")
    if len(r.ranges) > SHOWN_RANGES:
        print(f"... and {len(r.ranges) - SHOWN_RANGES} more ranges (--json lists them all)")
    if r.resized_from is not None:
        verb = "would resize" if r.dry_run else "resized"
        print(f"{verb} {r.target} from {r.resized_from} to {r.bytes} bytes")
    objects = (f"{r.objects_needed} objects ({human_bytes(r.objects_needed_bytes)}) under "
               "them")
    if r.dry_run:
        print(f"dry run: {r.target} differs from backup {r.backup_id} in {len(r.ranges)} "
              f"ranges, {human_bytes(r.differing_bytes)}; a delta restore would fetch "
              f"{objects} and write {r.differing_bytes} bytes")
    elif not r.ranges:
        print(f"{r.target} already holds backup {r.backup_id}: nothing written "
              f"(compared in {r.compare_seconds:.2f} s)")
    else:
        print(f"restored backup {r.backup_id} to {r.target} by delta: wrote "
              f"{human_bytes(r.written_bytes)} in {len(r.ranges)} ranges, {objects}, "
              f"{r.objects_fetched} fetched ({human_bytes(r.fetched_bytes)} from the store); "
              f"{r.seconds:.2f} s (compare {r.compare_seconds:.2f} s)")
