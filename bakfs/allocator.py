"""glibc's allocator, tuned for what bakfs allocates: a few large, short-lived buffers (4 MiB
objects fetched, decompressed, served and dropped, hundreds per GiB).

Left alone, glibc gives each worker thread an arena of its own, serves blocks this size
with fresh mmaps or trims them back to the kernel as they are freed, and the next object
then touches fresh pages: a page fault per 4 KiB, measured at 0.3-0.6 CPU-s per GiB read
on this machine. Two arenas, and blocks up to 16 MiB kept in them (32 MiB of slack each
before trimming), make those buffers come back warm, for a bounded ~64 MiB of RSS.

Python's cycle collector is tuned here too (`tune_collector`): with its defaults it walks
every live object again and again while a command builds tens of thousands of them (an
index's records, a listing's keys).

Called once at start, before threads exist. Knows nothing of bakfs's other modules.
"""

from __future__ import annotations

import ctypes
import gc
import logging

log = logging.getLogger(__name__)

# mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

SETTINGS = {M_ARENA_MAX: 2, M_MMAP_THRESHOLD: 16 << 20, M_TRIM_THRESHOLD: 32 << 20}
# The young generation is collected every 50,000 net allocations instead of 700, the older
# ones a twentieth as often. bakfs makes few reference cycles; `bakfs ls` over 10,000
# backups spent 0.1-0.3 s of its 1.3 s in the collector with the defaults (700, 10, 10).
COLLECTOR_THRESHOLDS = (50_000, 20, 20)


def tune() -> bool:
    """Apply SETTINGS where the C library is glibc; True when every one was taken."""
    try:
        # glibc's soname; find_library would run `ldconfig -p` at every start for it
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    taken = all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
    if not taken:
        log.debug("glibc refused some allocator settings; running with its defaults")
    return taken


def tune_collector() -> None:
    """Collect cycles less often (COLLECTOR_THRESHOLDS); garbage without cycles is freed at
    once whatever the thresholds, so memory stays bounded."""
    gc.set_threshold(*COLLECTOR_THRESHOLDS)


def spare_exit() -> None:
    """Called once a command is done: the interpreter's last collection at exit walks every
    object still alive (botocore's models, an index's records), 0.04-0.05 s of a 0.9 s
    `bakfs ls`. Frozen objects are skipped by it and still freed as the modules go."""
    gc.freeze()
