"""mount(8)'s command line for bakfs (through mount.fuse3) turned into bakfs's own."""

from bakfs.cli.fstab import translate
from bakfs.cli.main import build_parser


def test_mount_fuse3_command_line_becomes_bakfs_mount() -> None:
    argv = translate(["bakfs", "/mnt/backups", "-o",
                      "rw,config=/etc/bakfs/bakfs.toml,log=/var/log/bakfs.log,allow_other,"
                      "x-systemd.requires=network-online.target,defaults,dev,suid"])
    assert argv == ["--config", "/etc/bakfs/bakfs.toml", "mount", "/mnt/backups", "--log",
                    "/var/log/bakfs.log", "-o", "rw,allow_other,dev,suid"]
    args = build_parser().parse_args(argv)
    assert (args.command, args.mountpoint, args.config) == (
        "mount", "/mnt/backups", "/etc/bakfs/bakfs.toml")
    assert not args.foreground  # a daemon: mount(8) returns once it is mounted
    # mount(8) made the source a path (a `bakfs` in the current directory); -v, -n are its own
    assert translate(["/root/bakfs", "/mnt/b", "-v", "-n", "-orw"]) == [
        "mount", "/mnt/b", "-o", "rw"]


def test_other_command_lines_are_left_alone() -> None:
    for argv in (["mount", "/mnt"], ["restore", "id", "t.img"], ["bakfs"], ["bakfs", "-x"],
                 ["bakfs", "/mnt", "--weird"], ["ls"]):
        assert translate(argv) == argv
