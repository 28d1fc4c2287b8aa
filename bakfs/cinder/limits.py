"""The largest numbers a backup's documents may claim, so a hostile or broken `_metadata`
cannot make a reader allocate gigabytes or overflow a file size: one `Limits` value, set once
at start from the configuration (`configure`) and used by every parse of a document unless a
caller passes its own. Pure code: no I/O.
"""

from __future__ import annotations

import dataclasses

from bakfs.config import Config, MiB, TiB

CINDER_OBJECT_SIZE = 50 * MiB  # Cinder's default backup_s3_object_size
OBJECT_MARGIN = 2  # an object may be this many times the larger of the two object sizes


@dataclasses.dataclass(frozen=True)
class Limits:
    """Bounds of what a document may claim: the volume's size (every object's end) and one
    object's length."""

    max_volume_size: int = 64 * TiB
    max_object_length: int = OBJECT_MARGIN * CINDER_OBJECT_SIZE

    @classmethod
    def from_config(cls, config: Config) -> Limits:
        """`index.max_volume_size`, and objects up to OBJECT_MARGIN times the larger of
        `s3.object_size` and Cinder's default object size (Cinder-made backups use it)."""
        return cls(config.index.max_volume_size,
                   OBJECT_MARGIN * max(config.s3.object_size, CINDER_OBJECT_SIZE))


_limits = Limits()


def configure(limits: Limits) -> None:
    """Set the limits every parse uses unless given others: once, at start, from the
    configuration, so `ls`, the index, the mount and `restore` apply the same bounds without
    the configuration being handed through every call that reads a document."""
    global _limits
    _limits = limits


def current_limits() -> Limits:
    return _limits
