"""`bakfs mount MOUNTPOINT`: start the daemon (or serve in the foreground) and say so."""

from __future__ import annotations

import argparse
import sys

from bakfs.config import Config
from bakfs.mount.launch import mount


def run(args: argparse.Namespace, config: Config) -> int:
    options = [o for group in args.fuse_options for o in group.split(",") if o]
    started = mount(config, args.mountpoint, foreground=args.foreground, fuse_options=options,
                    log_file=args.log)
    if started is None:  # served in the foreground until unmounted
        return 0
    if started.error is not None:
        print(f"bakfs: mount failed: {started.error}; see {started.log_path}", file=sys.stderr)
        return 1
    print(f"mounted (daemon pid {started.pid}, log {started.log_path})")
    return 0
