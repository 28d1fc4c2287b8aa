"""The `bakfs` command line: argv in, configuration loaded, one command run, errors printed
as one clear line (no traceback) with a non-zero exit code.

Knows nothing of S3, LMDB or FUSE internals; commands live in `bakfs.commands`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from bakfs import __version__
from bakfs.errors import BakfsError

log = logging.getLogger("bakfs")

DESCRIPTION = """\
bakfs shows OpenStack Cinder volume backups kept in S3 (or TSM) as files, and makes new
backups in Cinder's chunked format. Configuration: --config FILE, else $BAKFS_CONFIG, else
~/.config/bakfs/bakfs.toml or /etc/bakfs/bakfs.toml; every option can be overridden by an
environment variable BAKFS_<SECTION>_<OPTION> (see `bakfs config show`). With no
configuration at all bakfs uses an embedded local store, so every command works at once.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bakfs", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"bakfs {__version__}")
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    parser.add_argument("--debug-module", metavar="NAME", action="append", default=[],
                        help="also let this library log at DEBUG (e.g. botocore); may "
                             "print request details")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    config = commands.add_parser("config", help="show or check the configuration",
                                 description="Show or check the effective configuration.")
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION",
                                            required=True)
    show = config_commands.add_parser(
        "show", help="print every option, its value (secrets masked) and where it came from")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    config_commands.add_parser(
        "check", help="validate the configuration and reach the store (creating the bucket "
                      "if allowed)")

    demo = commands.add_parser(
        "demo", help="back up a generated image and restore it, checking every byte",
        description="Generate a VM-like image, back it up (full), change 2%% of it, back it "
                    "up again (incremental), restore both and compare sha256. Uses the "
                    "configured store: the embedded local store when nothing is configured.")
    demo.add_argument("--size", default="64MiB", help="image size (default 64MiB)")
    demo.add_argument("--keep", action="store_true",
                      help="keep the demo's backups in the store (default: remove them)")
    demo.add_argument("--workdir", metavar="DIR",
                      help="where to put the images (default: a temporary directory)")

    restore = commands.add_parser(
        "restore", help="write a backup's whole volume to a file or block device",
        description="Restore BACKUP (an id; its incremental chain is resolved) to TARGET, a "
                    "file (created sparse: zero ranges are not written) or a block device. "
                    "Every object is verified (length and md5) before its bytes are written.")
    restore.add_argument("backup_id", metavar="BACKUP")
    restore.add_argument("target", metavar="TARGET")
    restore.add_argument("--json", action="store_true",
                         help="print a JSON summary (and progress lines) instead of a bar")

    index = commands.add_parser(
        "index", help="refresh or rebuild the local chunk index (LMDB)",
        description="The index is a cache of the store: `refresh` adds new backups and drops "
                    "deleted ones; `rebuild` recreates it from nothing.")
    index.add_argument("index_action", choices=["refresh", "rebuild"], metavar="ACTION",
                       help="refresh or rebuild")
    index.add_argument("--json", action="store_true", help="machine-readable output")

    export = commands.add_parser(
        "export-record", help="print the Cinder backup-import record of a backup",
        description="Print the `backup_url` with which `cinder backup-import` makes a "
                    "bakfs backup known to Cinder (import the parents of an incremental "
                    "first).")
    export.add_argument("backup_id", metavar="BACKUP_ID")
    export.add_argument("--json", action="store_true", help="print the decoded record too")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from bakfs import commands
    from bakfs import config as config_module
    from bakfs import log as log_module

    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    log_module.setup(level, debug_modules=args.debug_module)
    try:
        config = config_module.load(args.config)
        log_module.setup(level, config, args.debug_module)
        for warning in config.warnings:
            log.warning("%s", warning)
        return commands.run(args, config)
    except BakfsError as exc:
        print(f"bakfs: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bakfs: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
