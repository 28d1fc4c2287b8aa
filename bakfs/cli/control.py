"""`bakfs umount` and `bakfs refresh`: commands on a running mount."""

from __future__ import annotations

import argparse

from bakfs.config import Config
from bakfs.mount import control


def run(args: argparse.Namespace, config: Config) -> int:
    if args.command == "umount":
        control.unmount(args.mountpoint, force=args.force)
        print(f"unmounted {args.mountpoint}")
        return 0
    backups, volumes = control.refresh(args.mountpoint)
    print(f"refreshed {args.mountpoint}: {backups} backups of {volumes} volumes")
    return 0
