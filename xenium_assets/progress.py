"""Progress reporting that the library can call without knowing who listens.

Library functions take a ``progress(stage, done, total)`` callable. The command line passes
:class:`TqdmProgress` (a bar per stage); Dagster assets pass :class:`LogProgress` (a line in the run
log at most every few seconds), so long work shows progress in both places.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol


class Progress(Protocol):
    def __call__(self, stage: str, done: int, total: int) -> None: ...


def no_progress(stage: str, done: int, total: int) -> None:
    """The default: report nothing."""


class TqdmProgress:
    """One tqdm bar per stage, closed when the stage completes."""

    def __init__(self) -> None:
        self._bars: dict = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm.auto import tqdm

        bar = self._bars.get(stage)
        if bar is None:
            bar = self._bars[stage] = tqdm(total=total, desc=stage, unit="step", leave=True)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()


class LogProgress:
    """Calls ``log`` with 'stage: done/total (pct)' at most every ``every_s`` seconds and at the end."""

    def __init__(self, log: Callable[[str], None], every_s: float = 5.0) -> None:
        self.log = log
        self.every_s = every_s
        self._last: dict[str, float] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - self._last.get(stage, 0.0) >= self.every_s:
            self._last[stage] = now
            self.log(f"{stage}: {done}/{total} ({100 * done / max(total, 1):.0f}%)")
