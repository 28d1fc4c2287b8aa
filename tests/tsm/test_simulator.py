"""The dsmc simulator itself: honest help, Cinder's exact command lines and success checks,
versions, return codes and streams, prompts, and no password in its records."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.conftest import ROOT
from tests.tsm.conftest import SimServer, random_file

DSMC = str(ROOT / "scripts" / "dsmc")


def dsmc(*args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DSMC, *args], capture_output=True, text=True, stdin=stdin,
                          timeout=60)


def cinder_check(output: str, attrs: dict[str, str], exact_match: bool = True) -> bool:
    """Cinder's `_check_dsmc_output`, as the seed has it (untrimmed key at the first ':')."""
    parsed = {}
    for line in output.split("\n"):
        key, sep, val = line.partition(":")
        if sep and len(val.strip()) > 0:
            parsed[key] = val.strip()
    for ckey, cval in attrs.items():
        if ckey not in parsed:
            return False
        if exact_match and parsed[ckey] != cval:
            return False
        if not exact_match and int(parsed[ckey]) < int(cval):
            return False
    return True


def test_help_says_it_is_a_simulator(sim: SimServer) -> None:
    result = dsmc("--help")
    assert result.returncode == 0
    assert "SIMULATOR" in result.stdout and "NOT IBM's dsmc" in result.stdout
    assert "DSMC_SIM_FAIL_AFTER_BYTES" in result.stdout


def test_cinders_command_lines_and_checks(sim: SimServer, loop_device: str,
                                          tmp_path: Path) -> None:
    pw = f"-password={sim.password}"
    link = "/dev/backup-simtest"
    os.link(loop_device, link)
    try:
        with open(loop_device, "rb") as f:
            original = f.read()
        out = dsmc("backup", "image", "-quiet", "-compression=yes", pw, link)
        assert out.returncode == 0, out.stdout
        assert cinder_check(out.stdout, {"Total number of objects backed up": "1"}, False)
        with open(loop_device, "r+b") as f:
            f.write(bytes(len(original)))
        out = dsmc("restore", "image", "-noprompt", "-quiet", pw, link)
        assert out.returncode == 0, out.stdout
        assert cinder_check(out.stdout, {"Total number of objects restored": "1"})
        with open(loop_device, "rb") as f:
            assert f.read() == original
        out = dsmc("delete", "backup", "-quiet", "-noprompt", "-objtype=image", pw, link)
        assert out.returncode == 0 and cinder_check(out.stdout,
                                                    {"Total number of objects deleted": "1"})
    finally:
        os.unlink(link)
    # file mode: Cinder's bare `dsmc backup` and `restore -replace=yes`
    volume = tmp_path / "backup-file1"
    data = random_file(volume, 100_000)
    out = dsmc("backup", "-quiet", "-compression=no", pw, str(volume))
    assert out.returncode == 0 and cinder_check(
        out.stdout, {"Total number of objects backed up": "1"}, exact_match=False)
    volume.write_bytes(b"")
    out = dsmc("restore", "-replace=yes", "-quiet", pw, str(volume))
    assert out.returncode == 0 and cinder_check(out.stdout,
                                                {"Total number of objects restored": "1"})
    assert volume.read_bytes() == data
    log = (sim.path / "log" / "commands.jsonl").read_text()
    assert sim.password not in log and "-password=****" in log


def test_versions_return_codes_streams_and_prompts(sim: SimServer, tmp_path: Path) -> None:
    pw = f"-password={sim.password}"
    path = tmp_path / "f.raw"
    path.write_bytes(b"one")
    assert dsmc("sel", pw, str(path)).returncode == 0
    time.sleep(1.1)  # versions one second apart, for the point-in-time restore
    mid = time.strftime("%Y-%m-%d %H:%M:%S")
    time.sleep(1.1)
    path.write_bytes(b"two!")
    assert dsmc("selective", pw, str(path)).returncode == 0
    listing = dsmc("q", "ba", "-inactive", "-dateformat=3", pw, str(path))
    assert listing.returncode == 0
    rows = [line for line in listing.stdout.splitlines() if line.rstrip().endswith(str(path))]
    assert [r.split()[-2] for r in rows] == ["A", "I"]
    date, clock = mid.split()
    out = dsmc("rest", "-replace=all", f"-pitdate={date}", f"-pittime={clock}",
               "-dateformat=3", pw, str(path), str(tmp_path / "old"))
    assert out.returncode == 0 and (tmp_path / "old").read_bytes() == b"one"

    nothing = dsmc("q", "ba", pw, str(tmp_path / "none"))
    assert nothing.returncode == 8 and "ANS1092W" in nothing.stderr
    assert "ANS1092W" not in nothing.stdout
    bad = dsmc("sel", "-bogus", pw, str(path))
    assert bad.returncode == 12 and "ANS1107E" in bad.stdout
    missing = dsmc("rest", pw, str(tmp_path / "none"), str(tmp_path / "x"))
    assert missing.returncode == 12 and "ANS1302E" in missing.stdout
    # an existing destination without -replace: the user-action prompt, then rc 12 at EOF
    prompt = dsmc("rest", pw, str(path), str(tmp_path / "old"))
    assert prompt.returncode == 12 and "Action [1,2,3,4,A] :" in prompt.stdout
    # no password anywhere: the user-id prompt, then ANS1025E
    nopw = dsmc("sel", str(path))
    assert nopw.returncode == 12
    assert "ANS1051I" in nopw.stdout and "ANS1025E" in nopw.stdout
    # a password from an options file (what bakfs uses) works
    optfile = tmp_path / "dsm.opt"
    optfile.write_text(f"* bakfs\nPASSWORD {sim.password}\n")
    assert dsmc("q", "se", f"-optfile={optfile}").returncode == 0
    sim.set(server_down=1)
    down = dsmc("q", "se", pw)
    assert down.returncode == 12 and "Node Name: BAKFS-TEST" in down.stdout
    assert "ANS1017E" in (tmp_path / "dsmlog" / "dsmerror.log").read_text()
