"""The one error a broken bundle raises."""

from __future__ import annotations

from pathlib import Path


class BundleError(Exception):
    """A bundle that cannot be used. ``str()`` is one line: the file, what is wrong, and the fix."""

    def __init__(self, path: str | Path, problem: str, fix: str | None = None) -> None:
        self.path = Path(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.path}: {problem}" + (f"; {fix}" if fix else ""))
