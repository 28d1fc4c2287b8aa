"""dsmc, the IBM Storage Protect (TSM) command-line client, as pure data: the command lines
bakfs runs, the parsing of what dsmc prints, and the mapping of return codes and ANS messages
to bakfs errors.

Pure functions and dataclasses: no process is started and no file is touched here (that is
`bakfs.tsm.runner`). Never takes a password: the runner hands dsmc an options file.
Knows nothing of trio, FUSE, the object store or the staging area.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Literal

from bakfs.errors import (
    TsmAuthFailed,
    TsmClientError,
    TsmError,
    TsmFailed,
    TsmNoSpace,
    TsmNotFound,
    TsmPrompted,
    TsmUnreachable,
)

Mode = Literal["image", "file"]
MODES: tuple[Mode, ...] = ("image", "file")

# Options every bakfs invocation carries, so the output bakfs parses does not depend on the
# locale of the host (ENDIT pins the same three).
FORMAT_OPTIONS = ("-dateformat=3", "-timeformat=1", "-numberformat=1")


# ---- command lines ---------------------------------------------------------------------------


def common_options(optfile: str | None) -> list[str]:
    opts = list(FORMAT_OPTIONS)
    if optfile is not None:
        opts.insert(0, f"-optfile={optfile}")
    return opts


def backup_argv(dsmc: str, mode: Mode, path: str, *, compression: bool,
                optfile: str | None) -> list[str]:
    """Image mode: `backup image`; file mode: `selective` (Cinder's bare `backup` is not a
    documented command)."""
    words = ["backup", "image"] if mode == "image" else ["selective"]
    return [dsmc, *words, *common_options(optfile),
            f"-compression={'yes' if compression else 'no'}", path]


def restore_argv(dsmc: str, mode: Mode, path: str, dest: str | None, *,
                 to_file: bool, optfile: str | None) -> list[str]:
    """`restore image -noprompt [-imagetofile] SRC [DEST]` or `restore -replace=all SRC DEST`;
    DEST only when it differs from SRC (as Cinder does)."""
    if mode == "image":
        argv = [dsmc, "restore", "image", *common_options(optfile), "-noprompt"]
        if to_file:
            argv.append("-imagetofile")
    else:
        argv = [dsmc, "restore", *common_options(optfile), "-replace=all"]
    argv.append(path)
    if dest is not None and dest != path:
        argv.append(dest)
    return argv


def delete_argv(dsmc: str, mode: Mode, path: str, *, optfile: str | None) -> list[str]:
    return [dsmc, "delete", "backup", *common_options(optfile), "-noprompt",
            f"-objtype={mode}", path]


def masked_argv(argv: Iterable[str]) -> list[str]:
    """argv for logs: a `-password=` (which bakfs never passes) shows as ****."""
    return [a.split("=", 1)[0] + "=****" if a.lower().startswith("-pas") and "=" in a else a
            for a in argv]


def options_file_text(base: str, password: str) -> str:
    """The private options file: the site's options (minus any PASSWORD line) plus ours."""
    if "\n" in password or "\r" in password:
        raise TsmClientError("tsm.password must be one line")
    kept = [line for line in base.splitlines()
            if line.strip().split(" ", 1)[0].lower() != "password"]
    return "\n".join([*kept, f"PASSWORD {password}", ""])


# ---- output ----------------------------------------------------------------------------------

_MESSAGE_RE = re.compile(r"^(AN[ERS])(\d{4})([IWES])\s+(.*)$")
_STAT_RE = re.compile(r"^(?P<label>[A-Z][A-Za-z /-]*?):\s+(?P<value>\S.*?)\s*$")
_PROMPT_RES = (
    re.compile(r"^--- User Action is Required ---"),
    re.compile(r"^Action \[[^]]*\] :"),
    re.compile(r"^Please enter (your user id|password)"),
    re.compile(r"\(Yes \(Y\)/No \(N\)\)"),
    re.compile(r"^TSM Scrollable PICK Window"),
)
_SIZE_RE = re.compile(r"^(\d[\d,.]*)\s+(B|KB|MB|GB|TB|PB)$")
_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40, "PB": 1 << 50}

OBJECTS_BACKED_UP = "Total number of objects backed up"
OBJECTS_RESTORED = "Total number of objects restored"
OBJECTS_DELETED = "Total number of objects deleted"
OBJECTS_FAILED = "Total number of objects failed"


@dataclasses.dataclass(frozen=True)
class Message:
    """One ANS message: `code` like 'ANS1017E', `severity` one of I W E S."""

    code: str
    severity: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


@dataclasses.dataclass
class Output:
    """What one dsmc run printed (stdout and stderr read together, in arrival order)."""

    lines: list[str]
    messages: list[Message]
    stats: dict[str, str]
    prompt: str | None

    def codes(self) -> set[str]:
        return {m.code for m in self.messages}

    def count(self, label: str) -> int | None:
        """A statistics count ('6,491' → 6491); None when the line is missing."""
        value = self.stats.get(label)
        if value is None:
            return None
        digits = re.sub(r"[,.' ]", "", value)
        return int(digits) if digits.isdigit() else None

    def approx_bytes(self, label: str) -> int | None:
        """A scaled size ('2.37 GB'): informational only, never an exact size."""
        m = _SIZE_RE.match(self.stats.get(label, ""))
        if not m:
            return None
        return int(float(m.group(1).replace(",", "")) * _UNITS[m.group(2)])


def is_prompt(line: str) -> bool:
    """True for a line by which dsmc asks its terminal a question."""
    return any(r.search(line) for r in _PROMPT_RES)


def parse_message(line: str) -> Message | None:
    m = _MESSAGE_RE.match(line.strip())
    if not m:
        return None
    return Message(m.group(1) + m.group(2) + m.group(3), m.group(3), m.group(4).strip())


def parse_output(lines: Iterable[str]) -> Output:
    """Messages (continuation lines appended), statistics (last occurrence wins), prompts."""
    kept: list[str] = []
    messages: list[Message] = []
    stats: dict[str, str] = {}
    prompt = None
    for raw in lines:
        line = raw.rstrip("\r\n")
        kept.append(line)
        if prompt is None and is_prompt(line):
            prompt = line.strip()
        message = parse_message(line)
        if message is not None:
            messages.append(message)
            continue
        m = _STAT_RE.match(line)
        if m and m.group("label").startswith(("Total", "Data transfer", "Network data",
                                              "Aggregate data", "Objects compressed",
                                              "Elapsed processing", "Deduplication")):
            stats[m.group("label")] = m.group("value")
    return Output(kept, messages, stats, prompt)


# ---- decisions -------------------------------------------------------------------------------

_UNREACHABLE = {"ANS1017E", "ANS1809W", "ANS0326E", "ANS1330S", "ANS5283E"}
_AUTH = {"ANS1025E", "ANS1051I", "ANS1353E"}
_NOT_FOUND = {"ANS1302E", "ANS1092W", "ANS1345E", "ANS4000E"}
_NO_SPACE = {"ANS1329S", "ANS1311E", "ANS4009E"}
_CLIENT = {"ANS1107E", "ANS1138E", "ANS1217E", "ANS1036S", "ANS1063E"}


def _reason(output: Output, rc: int | None) -> str:
    shown = [str(m) for m in output.messages if m.severity != "I" or m.code in _AUTH]
    text = "; ".join(shown[-4:]) if shown else "no ANS message"
    return f"{text} (rc {rc if rc is not None else 'killed'})"


def error_for(output: Output, rc: int | None, what: str) -> TsmError:
    """The bakfs error that explains a failed run, most specific cause first."""
    codes = output.codes()
    messages = [str(m) for m in output.messages]
    reason = _reason(output, rc)
    if output.prompt is not None and not codes & (_AUTH | _UNREACHABLE):
        return TsmPrompted(f"{what}: dsmc asked {output.prompt!r} and was stopped (bakfs "
                           f"runs it without a terminal); {reason}", rc=rc, messages=messages)
    if codes & _AUTH:
        return TsmAuthFailed(f"{what}: the TSM server refused the node or password "
                             f"(check tsm.password or the client's stored password); {reason}",
                             rc=rc, messages=messages)
    if codes & _UNREACHABLE:
        return TsmUnreachable(f"{what}: the TSM server cannot be reached or the session was "
                              f"lost; {reason}", rc=rc, messages=messages)
    if codes & _NO_SPACE:
        where = "at the destination" if "ANS4009E" in codes else "on the TSM server"
        return TsmNoSpace(f"{what}: no space {where}; {reason}", rc=rc, messages=messages)
    if codes & _NOT_FOUND:
        return TsmNotFound(f"{what}: the object is not on the TSM server; {reason}",
                           rc=rc, messages=messages)
    if codes & _CLIENT:
        return TsmClientError(f"{what}: dsmc refused the request; {reason}", rc=rc,
                              messages=messages)
    if rc is None:
        return TsmUnreachable(f"{what}: dsmc was killed; {reason}", rc=rc, messages=messages)
    return TsmFailed(f"{what} failed; {reason}", rc=rc, messages=messages)


def check_backup(output: Output, rc: int | None, what: str) -> None:
    """Success: rc 0 and, when the statistics block is there, at least one object backed up
    (parent directories are counted too the first time, as Cinder notes)."""
    backed_up = output.count(OBJECTS_BACKED_UP)
    if rc == 0 and (backed_up is None or backed_up >= 1):
        return
    if rc == 0:
        raise TsmFailed(f"{what}: dsmc reported 0 objects backed up", rc=rc,
                        messages=[str(m) for m in output.messages])
    raise error_for(output, rc, what)


def check_restore(output: Output, rc: int | None, what: str) -> None:
    """Success: rc 0, and `restored == 1` with no failure when the block is printed (it may be
    missing under -quiet; the caller checks size and sha256 in every case)."""
    restored = output.count(OBJECTS_RESTORED)
    failed = output.count(OBJECTS_FAILED) or 0
    if rc == 0 and (restored is None or (restored == 1 and failed == 0)):
        return
    if rc == 0:
        raise TsmFailed(f"{what}: dsmc reported {restored} objects restored, {failed} failed",
                        rc=rc, messages=[str(m) for m in output.messages])
    raise error_for(output, rc, what)


def check_delete(output: Output, rc: int | None, what: str) -> bool:
    """True when deleted; False when the object was already gone (ANS1345E/ANS1302E)."""
    deleted = output.count(OBJECTS_DELETED)
    if rc == 0 and (deleted is None or deleted >= 1):
        return True
    if output.codes() & {"ANS1345E", "ANS1302E"} and not output.codes() & (_AUTH | _UNREACHABLE):
        return False
    raise error_for(output, rc, what)
