"""The `bakfs` command line: argv in, configuration loaded, one command run, errors printed
as one clear line (no traceback) with a non-zero exit code.

The parser is here; each command group's module (`bakfs.cli.<module>`, see COMMANDS) turns
parsed arguments into calls of the library and prints the outcome for a person. Knows
nothing of S3, LMDB or FUSE internals.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from bakfs import __version__, allocator, prefetch
from bakfs import config as config_module
from bakfs import log as log_module
from bakfs.cinder import limits
from bakfs.cli import fstab
from bakfs.errors import BakfsError

log = logging.getLogger("bakfs")

# command -> the module of bakfs.cli that runs it (its `run(args, config)`)
COMMANDS = {
    "config": "configure", "demo": "demo", "backup": "backup", "ls": "inventory",
    "verify": "inventory", "delete": "inventory", "gc": "inventory", "index": "inventory",
    "export-record": "inventory", "restore": "device", "mount": "mount",
    "umount": "control", "refresh": "control", "tsm": "tsm", "stage": "tsm",
    "verify-device": "device", "attach": "attach", "detach": "attach",
    "completion": "completion",
}

DESCRIPTION = """\
bakfs shows OpenStack Cinder volume backups kept in S3 (or TSM) as files, and makes new
backups in Cinder's chunked format. Configuration: --config FILE, else $BAKFS_CONFIG, else
~/.config/bakfs/bakfs.toml or /etc/bakfs/bakfs.toml; every option can be overridden by an
environment variable BAKFS_<SECTION>_<OPTION> (see `bakfs config show`). With no
configuration at all bakfs uses an embedded local store, so every command works at once.
"""


def _accept_config_after_the_command(parser: argparse.ArgumentParser) -> None:
    """`bakfs mount /mnt --config F` as well as `bakfs --config F mount /mnt`: every
    command takes --config too (SUPPRESS: unless given there, the global one stands)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                                 help="TOML configuration file (as before the command)")
                _accept_config_after_the_command(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bakfs", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"bakfs {__version__}")
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more: -v for progress notes (INFO), -vv for DEBUG")
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
        "demo", help="the whole story on a generated image, checking every byte",
        description="Generate a VM-like image, mount the store, back the image up with dd "
                    "into incoming/, change 2%% of it, back it up again (an incremental), ls -l "
                    "the mount, restore both backups with dd and compare sha256. Uses the "
                    "configured store: the embedded local store when nothing is configured.")
    demo.add_argument("--size", default="64MiB", help="image size (default 64MiB)")
    demo.add_argument("--keep", action="store_true",
                      help="keep the demo's backups in the store (default: remove them)")
    demo.add_argument("--workdir", metavar="DIR",
                      help="where to put the images, kept afterwards (default: a temporary "
                           "directory, removed at the end)")

    backup = commands.add_parser(
        "backup", help="back up a file, block device or stdin (full or incremental)",
        description="Back up SOURCE (a regular file, a block device, a pipe, or - for stdin) "
                    "as a new backup of VOLUME in Cinder's format. By default it is an "
                    "incremental on the volume's newest complete backup when that one has the "
                    "same block size and the volume the same size, else a full backup (and "
                    "bakfs says why). Only changed blocks are uploaded. The backup becomes "
                    "visible only when complete; an interrupted one leaves nothing listed. "
                    "One writer per volume at a time.")
    backup.add_argument("source", metavar="SOURCE")
    backup.add_argument("--volume", required=True, metavar="VOLUME_ID",
                        help="volume id (letters, digits, '.', '_', '-'; Cinder uses UUIDs)")
    kind = backup.add_mutually_exclusive_group()
    kind.add_argument("--parent", metavar="BACKUP_ID", help="make an incremental on this backup")
    kind.add_argument("--full", action="store_true", help="make a full backup")
    backup.add_argument("--name", help="backup name (Cinder's display_name)")
    backup.add_argument("--description", help="backup description")
    backup.add_argument("--json", action="store_true", help="print a JSON summary on stdout")

    ls = commands.add_parser("ls", help="list volumes and their backups",
                             description="List the complete backups in the store (Cinder-made "
                                         "ones included), oldest first per volume. The "
                                         "answer comes from the local index after one "
                                         "listing of the store (backups new since are read "
                                         "and indexed first).")
    ls.add_argument("volume", nargs="?", metavar="VOLUME", help="only this volume")
    ls.add_argument("--all", action="store_true",
                    help="also show incomplete backups (orphans for `bakfs gc`)")
    ls.add_argument("--cached", action="store_true",
                    help="answer from the local index alone, without asking the store (backups "
                         "made elsewhere since the last refresh, and TSM backups, are not "
                         "shown)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")

    verify = commands.add_parser(
        "verify", help="check a backup's objects (and, with --deep, every block)",
        description="Check that every object of BACKUP exists and decodes to its recorded "
                    "length and md5, and that nothing foreign lives under its prefix. With "
                    "--deep, also reassemble the volume through its chain and compare every "
                    "block with the sha256file. Exit code 1 when anything is wrong.")
    verify.add_argument("backup_id", metavar="BACKUP")
    verify.add_argument("--deep", action="store_true", help="reassemble and check every block")

    delete = commands.add_parser(
        "delete", help="delete a backup no incremental depends on",
        description="Delete BACKUP's objects, `_metadata` first so it is never half listed. "
                    "Refused while incremental backups depend on it.")
    delete.add_argument("backup_id", metavar="BACKUP")

    gc = commands.add_parser(
        "gc", help="find (and with --delete remove) objects of interrupted backups",
        description="List the objects of backups that were interrupted before their "
                    "`_metadata` was written and that no running writer holds. Dry run unless "
                    "--delete is given.")
    gc.add_argument("volume", nargs="?", metavar="VOLUME", help="only this volume")
    gc.add_argument("--delete", action="store_true", help="remove them")
    gc.add_argument("--json", action="store_true", help="machine-readable output")

    restore = commands.add_parser(
        "restore", help="write a backup's whole volume to a file or block device",
        description="Restore BACKUP (an id; its incremental chain is resolved) to TARGET, a "
                    "file (created sparse: zero ranges are not written; it appears under its "
                    "name only when complete) or a block device. Every object is verified "
                    "(length and md5) before its bytes are written.")
    restore.add_argument("backup_id", metavar="BACKUP")
    restore.add_argument("target", metavar="TARGET")
    restore.add_argument("--check", action="store_true",
                         help="also compare every restored block with the backup's "
                              "_sha256file (end to end; uses every core, skips holes)")
    restore.add_argument("--sha256", action="store_true",
                         help="also compute the sha256 of the whole volume (one core, holes "
                              "included: slow for large sparse volumes)")
    restore.add_argument("--json", action="store_true",
                         help="print a JSON summary (and progress lines) instead of a bar")
    restore.add_argument("--delta", action="store_true",
                         help="TARGET is a stale copy (a file or device of the volume's size): "
                              "compare it with the backup's block hashes, fetch only the "
                              "objects under the blocks that differ and write only those "
                              "blocks")
    restore.add_argument("--dry-run", action="store_true",
                         help="with --delta: report what would be written and fetched, "
                              "change nothing")
    restore.add_argument("--resize", action="store_true",
                         help="with --delta: make a TARGET file of another size the volume's "
                              "size first (else it is refused)")

    verify_device = commands.add_parser(
        "verify-device", help="is this device or image file identical to a backup?",
        description="Hash TARGET (a block device or an image file) block by block with the "
                    "backup's block size and compare with the backup's _sha256file: only "
                    "that document is read from the store, never the backup's data. Prints "
                    "the differing ranges (merged) and a summary. Exit code 0 when "
                    "identical, 1 when not, 2 on an error.")
    verify_device.add_argument("backup_id", metavar="BACKUP")
    verify_device.add_argument("target", metavar="TARGET")
    verify_device.add_argument("--json", action="store_true",
                               help="print the result (every range) as JSON, progress as "
                                    "JSON lines")

    attach = commands.add_parser(
        "attach", help="attach a backup as a read-only disk and mount its partitions",
        description="File-level restore: attach BACKUP (an id, or a backup file of the mount) "
                    "of a running bakfs mount as a read-only loop device, expose its "
                    "partitions and mount each one's file system read-only (no journal "
                    "replay, nodev,nosuid,noexec). Prints the partitions and where they are "
                    "mounted. Reading a file fetches only the objects under it. Needs root.")
    attach.add_argument("backup", metavar="BACKUP")
    attach.add_argument("--mount", metavar="MOUNTPOINT",
                        help="the bakfs mount to use (default: the only one running)")
    attach.add_argument("--dir", metavar="DIR",
                        help="mount the partitions at DIR/p1, DIR/p2, ... (default: "
                             "/run/bakfs/attach/<backup id>)")
    attach.add_argument("--json", action="store_true", help="machine-readable output")

    detach = commands.add_parser(
        "detach", help="unmount and detach what `bakfs attach` attached",
        description="Unmount the partitions of an attached backup and detach its loop "
                    "device. WHAT is a backup id, a loop device or an attach directory; "
                    "--all detaches every attached backup. Refused while files are open "
                    "under a partition, unless --lazy.")
    which = detach.add_mutually_exclusive_group(required=True)
    which.add_argument("what", nargs="?", metavar="WHAT")
    which.add_argument("--all", action="store_true", help="every attached backup")
    detach.add_argument("--lazy", action="store_true",
                        help="detach even while files are open (they go away when closed)")
    detach.add_argument("--json", action="store_true", help="machine-readable output")

    index = commands.add_parser(
        "index", help="refresh or rebuild the local chunk index (LMDB)",
        description="The index is a cache of the store: `refresh` checks every row of it "
                    "(rebuilding it from the store if any is damaged), adds new backups and "
                    "drops deleted ones; `rebuild` recreates it from nothing.")
    index.add_argument("index_action", choices=["refresh", "rebuild"], metavar="ACTION",
                       help="refresh or rebuild")
    index.add_argument("--json", action="store_true", help="machine-readable output")

    mount = commands.add_parser(
        "mount", help="show every backup as a read-only sparse file; back up by writing",
        description="Mount the backup store at MOUNTPOINT: one directory per volume, one "
                    "read-only file per complete backup (restore with dd), `latest` per "
                    "volume, `.status` and `.metrics` at the root, and `incoming/`: writing "
                    "`incoming/<volume id>` makes a backup of that volume, visible when the "
                    "writer closes the file. Returns once the mount is ready unless "
                    "--foreground.")
    mount.add_argument("mountpoint", metavar="MOUNTPOINT")
    mount.add_argument("--foreground", "-f", action="store_true",
                       help="stay in the foreground, logging to stderr")
    mount.add_argument("-o", dest="fuse_options", action="append", default=[],
                       metavar="OPTION", help="FUSE mount option (e.g. allow_other); repeatable "
                                             "or comma-separated")
    mount.add_argument("--log", metavar="FILE",
                       help="log file of the background daemon (default: under "
                            "~/.local/state/bakfs/log)")

    umount = commands.add_parser(
        "umount", help="unmount, waiting for the daemon to finish",
        description="Unmount MOUNTPOINT and wait for its daemon to exit. Refused while a "
                    "backup is being written into incoming/, unless --force (which abandons "
                    "it: nothing is committed).")
    umount.add_argument("mountpoint", metavar="MOUNTPOINT")
    umount.add_argument("--force", action="store_true",
                        help="unmount even while backups are being written (they are "
                             "abandoned, earlier backups untouched) or files are open")

    refresh = commands.add_parser(
        "refresh", help="make a running mount show backups made elsewhere, now",
        description="List the store now in the bakfs mount at MOUNTPOINT, so backups made by "
                    "other gateways or by Cinder appear without waiting for the next "
                    "automatic refresh (index.refresh_interval). Returns when they are "
                    "visible.")
    refresh.add_argument("mountpoint", metavar="MOUNTPOINT")

    tsm = commands.add_parser(
        "tsm", help="backups kept in IBM Spectrum Protect (TSM) through dsmc",
        description="Back up to, list, restore and delete backups kept in IBM Spectrum "
                    "Protect. bakfs runs the dsmc client (tsm.dsmc_path) with the password "
                    "in a 0600 options file, never on its command line; each backup's record "
                    "(mode, path, exact size, sha256) is kept in the object store.")
    tsm_commands = tsm.add_subparsers(dest="tsm_command", metavar="ACTION", required=True)
    tsm_backup = tsm_commands.add_parser(
        "backup", help="back up a block device (image mode) or a file (file mode)")
    tsm_backup.add_argument("source", metavar="SOURCE")
    tsm_backup.add_argument("--volume", required=True, metavar="VOLUME_ID")
    tsm_backup.add_argument("--name", help="backup name (at most 255 characters)")
    tsm_backup.add_argument("--description",
                            help="backup description (at most 255 characters)")
    tsm_backup.add_argument("--json", action="store_true", help="print a JSON summary")
    tsm_ls = tsm_commands.add_parser("ls", help="list TSM backups")
    tsm_ls.add_argument("volume", nargs="?", metavar="VOLUME")
    tsm_ls.add_argument("--json", action="store_true")
    tsm_restore = tsm_commands.add_parser(
        "restore", help="restore a TSM backup to a file or block device (checked by sha256)")
    tsm_restore.add_argument("backup_id", metavar="BACKUP")
    tsm_restore.add_argument("target", metavar="TARGET")
    tsm_delete = tsm_commands.add_parser(
        "delete", help="delete a TSM backup and its record")
    tsm_delete.add_argument("backup_id", metavar="BACKUP")

    stage = commands.add_parser(
        "stage", help="restore a TSM backup into the staging area ahead of reading it",
        description="Start (and wait for) the staging of a TSM-held backup: a dsmc restore "
                    "into tsm.staging_path, checked by sha256, so later reads are served "
                    "from local disk.")
    stage.add_argument("backup_id", metavar="BACKUP")
    stage.add_argument("--mount", metavar="MOUNTPOINT",
                       help="stage through this running bakfs mount (it owns the staging area "
                            "while it runs)")
    stage.add_argument("--json", action="store_true", help="print a JSON summary")

    export = commands.add_parser(
        "export-record", help="print the Cinder backup-import record of a backup",
        description="Print the `backup_url` with which `cinder backup-import` makes a "
                    "bakfs backup known to Cinder (import the parents of an incremental "
                    "first).")
    export.add_argument("backup_id", metavar="BACKUP_ID")
    export.add_argument("--json", action="store_true", help="print the decoded record too")
    completion = commands.add_parser(
        "completion", help="print the bash completion script",
        description="Print a bash completion script (commands, options, and volume and "
                    "backup ids from the local index). Install it as "
                    "/usr/share/bash-completion/completions/bakfs, or add "
                    "eval \"$(bakfs completion)\" to ~/.bashrc.")
    completion.add_argument("words", nargs="*", help=argparse.SUPPRESS)
    completion.add_argument("--cword", type=int, help=argparse.SUPPRESS)
    _accept_config_after_the_command(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    allocator.tune()  # before any thread exists
    allocator.tune_collector()
    parser = build_parser()
    args = parser.parse_args(fstab.translate(list(sys.argv[1:] if argv is None else argv)))
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    log_module.setup(level, debug_modules=args.debug_module)
    try:
        config = config_module.load(args.config)
        log_module.setup(level, config, args.debug_module)
        limits.configure(limits.Limits.from_config(config))  # bounds of every document
        for warning in config.warnings:
            log.warning("%s", warning)
        # lazy: only the command's own module is imported, so `bakfs umount` loads neither
        # boto3 nor pyfuse3 and `bakfs mount` not the backup code (see docs/architecture.md)
        command = importlib.import_module(f"bakfs.cli.{COMMANDS[args.command]}")
        return int(command.run(args, config))
    except BakfsError as exc:
        print(f"bakfs: error: {log_module.redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bakfs: interrupted", file=sys.stderr)
        return 130
    finally:
        prefetch.reap()  # the read-ahead's helper, long done
        allocator.spare_exit()


if __name__ == "__main__":
    sys.exit(main())
