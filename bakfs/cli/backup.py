"""`bakfs backup SOURCE --volume ID`: the plan and why, a progress bar, and a summary."""

from __future__ import annotations

import argparse
import json
import sys

from bakfs.backup.plan import BackupPlan
from bakfs.backup.run import backup_source
from bakfs.backup.sink import BackupStats
from bakfs.backup.source import open_source
from bakfs.cinder import naming
from bakfs.cli.progress import Phases, human_bytes
from bakfs.config import Config
from bakfs.errors import BakfsError, FormatError


def run(args: argparse.Namespace, config: Config) -> int:
    try:
        naming.validate_id("volume", args.volume)
    except FormatError as exc:
        raise BakfsError(f"--volume: {exc}") from None
    source = open_source(args.source)
    phases = Phases(config.s3.enable_progress_timer)

    def on_plan(plan: BackupPlan, reason: str) -> None:
        if not args.json:
            print(f"backup {plan.backup_id} of volume {args.volume} ({source.kind} "
                  f"{source.path}): {reason}", file=sys.stderr)
        phases.start("backup", source.size)

    def on_progress(stats: BackupStats) -> None:
        phases.update_to(stats.bytes_read, f"changed {human_bytes(stats.bytes_changed)}, "
                                           f"sent {human_bytes(stats.bytes_uploaded)}")

    try:
        with phases:
            summary = backup_source(config, source, args.volume, parent_id=args.parent,
                                    full=args.full, name=args.name,
                                    description=args.description, on_plan=on_plan,
                                    on_progress=on_progress)
    finally:
        source.close()
    stats = summary.stats
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        print(f"backup {summary.ref.backup_id} complete: read "
              f"{human_bytes(stats['bytes_read'])}, stored {stats['objects']} objects "
              f"({human_bytes(stats['bytes_changed'])} changed, "
              f"{human_bytes(stats['bytes_uploaded'])} sent) in {stats['seconds']:.1f} s")
    return 0
