"""The allocator settings are taken by this machine's C library (glibc on Debian)."""

from __future__ import annotations

import platform

from bakfs import allocator


def test_glibc_takes_the_settings() -> None:
    assert platform.libc_ver()[0] == "glibc"
    assert allocator.tune() is True
