"""`bakfs restore BACKUP TARGET`: a progress bar (or JSON progress lines) and a summary."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import trio

from bakfs.cli.progress import Phases
from bakfs.config import Config
from bakfs.read.restore import RestoreResult, restore_with


def run(args: argparse.Namespace, config: Config) -> int:
    with Phases(config.s3.enable_progress_timer, json_lines=args.json) as phases:
        def on_start(size: int) -> Callable[[int], None]:
            return phases.start("restore", size).update_to

        async def main() -> RestoreResult:
            return await restore_with(config, args.backup_id, args.target, on_start=on_start,
                                      check=args.check, sha256=args.sha256)

        result = trio.run(main)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        extra = ""
        if result.checked:
            extra += f", all {result.checked_blocks} blocks match the _sha256file"
        if result.sha256 is not None:
            extra += f", sha256 {result.sha256}"
        print(f"restored backup {args.backup_id} to {args.target}: {result.bytes} bytes in "
              f"{result.seconds:.2f} s ({result.mb_per_s} MB/s), {result.objects_fetched} "
              f"objects fetched{extra}")
    return 0
