"""The pure side of dsmc: command lines, output parsing on real captured texts, and the
mapping of rc and ANS codes to bakfs errors."""

from __future__ import annotations

import pytest

from bakfs.errors import (
    TsmAuthFailed,
    TsmClientError,
    TsmFailed,
    TsmNoSpace,
    TsmNotFound,
    TsmPrompted,
    TsmUnreachable,
)
from bakfs.tsm import dsmc

# shared/docs/dsmc.md, sample C (a real 8.1.7 restore, IBM/storage-protect-galaxy)
RESTORE_CAPTURE = """\
Restore function invoked.

ANS1247I Waiting for files from the server...
Restoring         19 /ibm/gpfs0/worm_fset01/worm_test2 --> /ibm/gpfsl/worm_fset01/worm_test2 [Done]

Restore processing finished.

Total number of objects restored:       6,491
Total number of objects failed:             0
Total number of bytes transferred:       2.37 GB
Data transfer time:                      9.74 sec
Network data transfer rate:        254,743.14 KB/sec
Aggregate data transfer rate:       79,174.32 KB/sec
Elapsed processing time:             00:00:31
"""

# sample I (a file changing during backup, safespring docs)
CHANGED_CAPTURE = """\
Normal File-->         1,756,058 /var/log/audit/audit.log  Changed
ANS1228E Sending of object '/var/log/audit/audit.log' failed.
ANS4037E Object '/var/log/audit/audit.log' changed during processing.
Object skipped.
ANS1802E Incremental backup of '/var' finished with 1 failure(s)
"""


def test_statistics_and_messages_of_a_real_capture() -> None:
    out = dsmc.parse_output(RESTORE_CAPTURE.splitlines())
    assert out.count(dsmc.OBJECTS_RESTORED) == 6491
    assert out.count(dsmc.OBJECTS_FAILED) == 0
    assert out.stats["Elapsed processing time"] == "00:00:31"
    assert out.approx_bytes("Total number of bytes transferred") == int(2.37 * (1 << 30))
    assert [m.code for m in out.messages] == ["ANS1247I"]
    assert out.prompt is None
    changed = dsmc.parse_output(CHANGED_CAPTURE.splitlines())
    assert [m.code for m in changed.messages] == ["ANS1228E", "ANS4037E", "ANS1802E"]
    assert changed.count(dsmc.OBJECTS_BACKED_UP) is None


@pytest.mark.parametrize("line", [
    "--- User Action is Required ---",
    "Action [1,2,3,4,A] : ",
    "Please enter your user id <NODE1>: ",
    'Please enter password for user id "NODE1": ',
    "Do you wish to proceed? (Yes (Y)/No (N)) ",
    "TSM Scrollable PICK Window - Restore",
])
def test_prompts_are_recognised(line: str) -> None:
    assert dsmc.is_prompt(line)
    assert dsmc.parse_output(["Node Name: X", line]).prompt == line.strip()


@pytest.mark.parametrize(("codes", "error"), [
    (["ANS1017E Session rejected: TCP/IP connection failure"], TsmUnreachable),
    (["ANS1809W A session with the server was lost."], TsmUnreachable),
    (["ANS1025E Session rejected: Authentication failure"], TsmAuthFailed),
    (["ANS1353E Session rejected: Unknown or incorrect ID entered"], TsmAuthFailed),
    (["ANS1302E No objects on server match query"], TsmNotFound),
    (["ANS1345E No objects on the server match '/dev/x'"], TsmNotFound),
    (["ANS1228E Sending of object '/x' failed.", "ANS1329S Server out of data storage space"],
     TsmNoSpace),
    (["ANS4009E Error processing '/s/x.img': disk full condition"], TsmNoSpace),
    (["ANS1107E Invalid option/value: '-bogus'"], TsmClientError),
    (["ANS1228E Sending of object '/x' failed."], TsmFailed),
])
def test_errors_by_ans_code(codes: list[str], error: type[Exception]) -> None:
    out = dsmc.parse_output(["Node Name: X", *codes])
    exc = dsmc.error_for(out, 12, "TSM thing")
    assert type(exc) is error
    assert codes[-1].split()[0] in str(exc) and "rc 12" in str(exc)
    assert exc.rc == 12 and exc.messages == tuple(codes)


def test_prompt_without_auth_message_is_its_own_error() -> None:
    out = dsmc.parse_output(["--- User Action is Required ---", "Action [1,2,3,4,A] : "])
    assert isinstance(dsmc.error_for(out, None, "restore"), TsmPrompted)
    auth = dsmc.parse_output(["ANS1051I Invalid user id or password",
                              "Please enter your user id <N>: "])
    assert isinstance(dsmc.error_for(auth, None, "restore"), TsmAuthFailed)
    assert isinstance(dsmc.error_for(dsmc.parse_output([]), None, "x"), TsmUnreachable)


def test_success_checks() -> None:
    ok = dsmc.parse_output(["Total number of objects restored:  1",
                            "Total number of objects failed:  0"])
    dsmc.check_restore(ok, 0, "r")
    dsmc.check_restore(dsmc.parse_output([]), 0, "r")  # -quiet without summary: size decides
    with pytest.raises(TsmFailed, match="0 objects restored"):
        dsmc.check_restore(dsmc.parse_output(["Total number of objects restored: 0"]), 0, "r")
    dsmc.check_backup(dsmc.parse_output(["Total number of objects backed up:  3"]), 0, "b")
    with pytest.raises(TsmFailed):
        dsmc.check_backup(dsmc.parse_output(["Total number of objects backed up:  0"]), 0, "b")
    assert dsmc.check_delete(dsmc.parse_output(["Total number of objects deleted: 1"]), 0, "d")
    gone = dsmc.parse_output(["ANS1345E No objects on the server match '/dev/x'"])
    assert dsmc.check_delete(gone, 12, "d") is False
    with pytest.raises(TsmUnreachable):
        dsmc.check_delete(dsmc.parse_output(["ANS1017E Session rejected"]), 12, "d")


def test_command_lines_carry_no_password() -> None:
    argv = dsmc.backup_argv("dsmc", "image", "/dev/backup-1", compression=True,
                            optfile="/tmp/o/dsm.opt")
    assert argv == ["dsmc", "backup", "image", "-optfile=/tmp/o/dsm.opt", "-dateformat=3",
                    "-timeformat=1", "-numberformat=1", "-compression=yes", "/dev/backup-1"]
    assert dsmc.backup_argv("dsmc", "file", "/v/backup-1", compression=False,
                            optfile=None)[1] == "selective"
    restore = dsmc.restore_argv("dsmc", "image", "/dev/backup-1", "/s/1.img", to_file=True,
                                optfile=None)
    assert restore[:3] == ["dsmc", "restore", "image"]
    assert "-noprompt" in restore and "-imagetofile" in restore
    assert restore[-2:] == ["/dev/backup-1", "/s/1.img"]
    assert dsmc.restore_argv("dsmc", "file", "/v/b", "/v/b", to_file=False,
                             optfile=None)[-1] == "/v/b"
    delete = dsmc.delete_argv("dsmc", "file", "/v/b", optfile=None)
    assert "-noprompt" in delete and "-objtype=file" in delete
    assert not any("pass" in a.lower() for a in argv + restore + delete)
    assert dsmc.masked_argv(["dsmc", "-password=abc", "-PASSWORD=x", "/p"]) == \
        ["dsmc", "-password=****", "-PASSWORD=****", "/p"]


def test_options_file_replaces_the_sites_password_line() -> None:
    base = "SERVERNAME tsm1\n* comment\npassword old\nCOMPRESSION yes\n"
    text = dsmc.options_file_text(base, "new-secret")
    assert text.splitlines() == ["SERVERNAME tsm1", "* comment", "COMPRESSION yes",
                                 "PASSWORD new-secret"]
    with pytest.raises(TsmClientError):
        dsmc.options_file_text("", "two\nlines")
