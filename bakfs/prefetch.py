"""Read-ahead of the files a store command reads while it starts: its compiled modules
(botocore, urllib3, trio, the standard library's, bakfs's own), the shared libraries they
load and botocore's S3 model.

Python imports one module at a time, and each waits for its file. After a reboot (or
drop_caches) a first mount's main thread waited 90-130 ms for the disk (its block-I/O delay,
/proc/PID/stat), of 0.6-0.75 s to its first 4 KiB: about 470 files, 58 MB, 46 MB of it
shared libraries (with this machine's 8 MiB read-ahead, the first page fault in one reads
it whole). Here a helper process asks the kernel for all of them as soon as bakfs runs
(`posix_fadvise(WILLNEED)`: the reads go on in the background, in parallel), so the imports
find them in the page cache: 40-50 ms of waiting is left, most of it the interpreter's own
start, before this runs. A process, not a thread: a thread making ~1,400 system calls
waited for the GIL after each one while the imports held it, and took 0.12-0.24 s to get
through the list; the helper takes ~40 ms, on the other core. It is a bare interpreter
(`-I -S`, an empty environment: no secret reaches it) given the paths.

The list is `bakfs.startup_files`, made by scripts/gen-startup-files. A file the list lacks
is only read when imported, as without this; a listed file that does not exist is skipped.
Started by `bakfs.cli` for the commands that open the store, before their imports; reaped
without a thread (`reap`), so a mount still forks before any thread exists.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
import time
from collections.abc import Iterator, Sequence

from bakfs.startup_files import FILES

# the commands whose start imports the store's client (and the mount's, the FUSE side)
STORE_COMMANDS = frozenset({
    "mount", "restore", "verify-device", "backup", "ls", "verify", "delete", "gc", "index",
    "export-record", "attach", "stage", "demo",
})
# the roots the files are listed under (besides "/" and "bakfs", and a package found
# nowhere else, which is its own root)
STDLIB = "<stdlib>"  # the standard library
DYNLOAD = "<dynload>"  # its extension modules
PREFIX = "<prefix>"  # the interpreter's installation (libpython)
SITE = "<site>"  # the directory holding the dependencies: where botocore is

_helper: int | None = None  # the helper's pid until reaped


def wanted(argv: Sequence[str]) -> bool:
    """Whether the command line names a command that opens the store (the first few words
    are enough: options before the command are short)."""
    return any(word in STORE_COMMANDS for word in argv[1:4])


def start(argv: Sequence[str]) -> int | None:
    """Spawn the helper for a command that opens the store; its pid (`reap` collects it).
    Nothing but this module and the list is imported first: the sooner it runs, the more of
    the start it reads ahead of."""
    global _helper
    if not wanted(argv) or not sys.executable or not hasattr(os, "posix_fadvise"):
        return None
    quiet = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    try:
        _helper = os.posix_spawn(sys.executable, [sys.executable, "-I", "-S", "-c", HELPER,
                                                  *paths()], {}, file_actions=quiet)
    except OSError:  # no helper: the imports read their files themselves
        return None
    return _helper


def reap(timeout: float = 1.0) -> int | None:
    """Collect the helper (done long before anyone calls this: ~50 ms after the start), so
    no zombie outlives it; its exit status, or None when there is none or it is still
    running after `timeout` seconds. A mount calls this before it forks or serves, a
    command when it ends: no thread is needed to wait for it."""
    global _helper
    deadline = time.monotonic() + timeout
    while _helper is not None:
        try:
            pid, status = os.waitpid(_helper, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else
            _helper = None
            return None
        if pid:
            _helper = None
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.005)
    return None


HELPER = """
import os, sys
for path in sys.argv[1:]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        continue
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
    os.close(fd)
"""


def paths() -> Iterator[str]:
    """The listed files as paths on this machine, in the order the start reads them."""
    tag = sys.implementation.cache_tag or ""
    bases: dict[str, str | None] = {}
    for root, relative in FILES:
        if root not in bases:
            bases[root] = base_of(root)
        base = bases[root]
        if base is not None:
            yield os.path.join(base, relative.replace("{tag}", tag))


def base_of(root: str) -> str | None:
    """The directory a root's files are listed relative to, found without importing
    anything (one search of the path, for botocore's)."""
    stdlib = os.path.dirname(os.__file__)
    fixed = {STDLIB: stdlib, DYNLOAD: os.path.join(stdlib, "lib-dynload"),
             PREFIX: sys.base_prefix, "/": "/"}
    if root in fixed:
        return fixed[root]
    name = "botocore" if root == SITE else root
    module = sys.modules.get(name)
    if module is not None:
        locations = list(getattr(module, "__path__", []))
        origin = locations[0] if locations else getattr(module, "__file__", None)
    else:
        spec = importlib.machinery.PathFinder.find_spec(name)
        if spec is None:
            return None
        locations = list(spec.submodule_search_locations or [])
        origin = locations[0] if locations else spec.origin
    return os.path.dirname(origin) if origin else None
