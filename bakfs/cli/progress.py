"""Progress of long operations for a person: a bar with rate and ETA on a terminal, JSON lines
on stderr for scripts that asked for `--json`, nothing otherwise (scripts read the final
summary instead). Off entirely when `s3.enable_progress_timer` is false.
"""

from __future__ import annotations

import json
import sys
import time
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tqdm import tqdm

JSON_INTERVAL = 1.0  # seconds between JSON progress lines


class Progress:
    """A byte counter; `detail` adds a short status text to the bar."""

    def __init__(self, description: str, total: int | None, enabled: bool = True,
                 json_lines: bool = False) -> None:
        self._bar: tqdm[None] | None = None
        self.total = total
        self.json_lines = enabled and json_lines
        self._last = 0.0
        if enabled and not json_lines and sys.stderr.isatty():
            # lazy: tqdm only for a terminal (~25 ms of start-up the mount never pays)
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=description, unit="B", unit_scale=True,
                             unit_divisor=1024, dynamic_ncols=True, file=sys.stderr,
                             mininterval=0.5)

    def update_to(self, done: int, detail: str | None = None) -> None:
        if self.json_lines:
            if time.monotonic() - self._last >= JSON_INTERVAL:
                self._last = time.monotonic()
                print(json.dumps({"progress": done, "total": self.total}), file=sys.stderr)
            return
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


class Phases:
    """The progress bars of one command, one phase at a time: `start` closes the bar of the
    phase before; leaving the `with` closes the last one."""

    def __init__(self, enabled: bool = True, json_lines: bool = False) -> None:
        self._enabled = enabled
        self._json_lines = json_lines
        self._current: Progress | None = None

    def start(self, description: str, total: int | None) -> Progress:
        self.close()
        self._current = Progress(description, total, self._enabled, self._json_lines)
        return self._current

    def update_to(self, done: int, detail: str | None = None) -> None:
        if self._current is not None:
            self._current.update_to(done, detail)

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None

    def __enter__(self) -> Phases:
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
