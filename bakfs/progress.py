"""Progress of long operations: a bar on a terminal, nothing when not on one (scripts read the
final `--json` summary instead). Off entirely when `s3.enable_progress_timer` is false."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tqdm import tqdm


class Progress:
    """A byte counter shown as a bar with rate and ETA; `detail` adds a short status text."""

    def __init__(self, description: str, total: int | None, enabled: bool = True) -> None:
        self._bar: tqdm[None] | None = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm  # only for a terminal: the mount and scripts never load it

            self._bar = tqdm(total=total, desc=description, unit="B", unit_scale=True,
                             unit_divisor=1024, dynamic_ncols=True, file=sys.stderr,
                             mininterval=0.5)

    def update_to(self, done: int, detail: str | None = None) -> None:
        if self._bar is None:
            return
        self._bar.update(done - self._bar.n)
        if detail:
            self._bar.set_postfix_str(detail, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
