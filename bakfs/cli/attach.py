"""`bakfs attach BACKUP` and `bakfs detach [WHAT]`: a backup as a read-only disk whose
partitions are mounted, for taking single files out of it."""

from __future__ import annotations

import argparse
import json

from bakfs.cli.progress import human_bytes
from bakfs.config import Config
from bakfs.mount.attach import attach, detach


def run(args: argparse.Namespace, config: Config) -> int:
    if args.command == "detach":
        done = detach(None if args.all else args.what, lazy=args.lazy)
        if args.json:
            print(json.dumps([{"device": d.device, "backup_file": d.backup_file,
                               "unmounted": d.unmounted} for d in done], indent=2))
            return 0
        for d in done:
            unmounted = f" (unmounted {', '.join(d.unmounted)})" if d.unmounted else ""
            print(f"detached {d.device}{unmounted}")
        if not done:
            print("nothing was attached")
        return 0
    attached = attach(args.backup, mountpoint=args.mount, directory=args.dir)
    if args.json:
        print(json.dumps(attached.to_json(), indent=2))
        return 0
    print(f"attached backup {attached.backup_id} read-only as {attached.device}")
    for p in attached.partitions:
        what = p.fstype or "-"
        if p.label:
            what += f" {p.label!r}"
        where = (f"mounted read-only at {p.mountpoint}" if p.mountpoint
                 else f"not mounted: {p.note}")
        print(f"  {p.device}  {human_bytes(p.size):>10}  {what:<20}  {where}")
    print(f"when done: bakfs detach {attached.backup_id}")
    return 0
