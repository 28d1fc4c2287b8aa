"""The command line mount(8) gives bakfs. `mount -t fuse.bakfs bakfs /mnt/backups -o
config=/etc/bakfs/bakfs.toml` (and the /etc/fstab line `bakfs /mnt/backups fuse.bakfs
config=/etc/bakfs/bakfs.toml,_netdev 0 0`) run mount.fuse3, which runs
`bakfs bakfs /mnt/backups -o rw,config=...,dev,suid`: the first word is the fstab source,
which must be `bakfs` (mount(8) turns it into a path when the current directory holds a
`bakfs`, so any path ending in /bakfs counts too). That becomes `bakfs --config FILE mount
/mnt/backups -o rw,dev,suid`, a daemon that returns once the mount is ready, as mount(8)
expects.

bakfs's own options: `config=FILE` and `log=FILE`; `x-*` options (comments for systemd and
other userspace) and `defaults` are dropped; everything else is a FUSE option.
"""

from __future__ import annotations

import os

SOURCE = "bakfs"
MOUNT_FLAGS = {"-n", "-s", "-v"}  # no mtab, sloppy, verbose: mount(8)'s, nothing to do here


def translate(argv: list[str]) -> list[str]:
    """bakfs's own command line for mount(8)'s, or `argv` unchanged when it is not one."""
    if len(argv) < 2 or os.path.basename(argv[0]) != SOURCE or argv[1].startswith("-"):
        return argv
    options: list[str] = []
    rest = argv[2:]
    i = 0
    while i < len(rest):
        if rest[i] == "-o" and i + 1 < len(rest):
            options += rest[i + 1].split(",")
            i += 2
        elif rest[i].startswith("-o") and len(rest[i]) > 2:
            options += rest[i][2:].split(",")
            i += 1
        elif rest[i] in MOUNT_FLAGS:
            i += 1
        else:
            return argv  # not mount(8)'s form: let the parser say what is wrong
    front: list[str] = []
    own: list[str] = []
    fuse: list[str] = []
    for option in options:
        key, _, value = option.partition("=")
        if key == "config":
            front += ["--config", value]
        elif key == "log":
            own += ["--log", value]
        elif option and option != "defaults" and not option.startswith("x-"):
            fuse.append(option)
    return [*front, "mount", argv[1], *own, *(["-o", ",".join(fuse)] if fuse else [])]
