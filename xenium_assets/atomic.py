"""Atomic writes: a file or folder appears complete under its final name, or not at all.

Everything is written under a temporary sibling name and renamed at the end (a rename within one
folder is atomic on POSIX), so a killed run leaves at most a ``.partial-*`` leftover, never a
half-written output that a later run would trust.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PARTIAL = ".partial-"


def _temp_sibling(path: Path) -> Path:
    """'.name.partial-1a2b3c4d.ext': hidden, recognisable, and keeping the extension writers check."""
    suffix = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffix)]
    return path.with_name(f".{stem}{PARTIAL}{uuid.uuid4().hex[:8]}{suffix}")


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder to fill; it becomes ``path`` only if the block succeeds.

    With ``overwrite`` an existing ``path`` is swapped out and removed after the new one is in place.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists: choose another path or overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if path.exists():
            old = _temp_sibling(path)
            os.rename(path, old)
        os.rename(tmp, path)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str))
