"""Run a command and get its own peak RSS.

`wait4` on a child of the test process is not enough: exec records the RSS of the
address space it replaces, and subprocess spawns with vfork, whose address space is the
test process's (hundreds of MiB after in-process engine tests). A small reaper process
forks the command from its own small address space and reports the command's peak.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import IO, Any

_REAPER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_pid, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_with_peak_rss(argv: list[str], *, env: dict[str, str], stdout: IO[Any] | int,
                      stderr: IO[Any] | int, report: Path) -> tuple[int, float]:
    """(exit code, peak RSS in MiB) of `argv`; `report` is a scratch file."""
    code = subprocess.call([sys.executable, "-c", _REAPER, str(report), *argv], env=env,
                           stdout=stdout, stderr=stderr)
    return code, int(report.read_text()) / 1024
