"""The allocator settings are taken by this machine's C library (glibc on Debian)."""

from __future__ import annotations

import platform
import subprocess
import sys

from bakfs import allocator


def test_glibc_takes_the_settings() -> None:
    assert platform.libc_ver()[0] == "glibc"
    assert allocator.tune() is True



def test_a_command_collects_cycles_less_often_but_still_collects_them() -> None:
    code = ("import gc, weakref\n"
            "from bakfs import allocator\n"
            "allocator.tune_collector()\n"
            "print(*gc.get_threshold())\n"
            "class Node: pass\n"
            "a = Node(); a.me = a; alive = weakref.ref(a); del a\n"
            "kept = [[] for _ in range(1_000)]\n"  # not enough for a collection yet
            "print(alive() is None)\n"
            "kept += [[] for _ in range(60_000)]\n"
            "print(alive() is None)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["50000", "20", "20", "False", "True"]
