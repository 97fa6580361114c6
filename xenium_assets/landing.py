"""Finding new, completely copied Xenium output folders in a landing directory.

A folder counts as a bundle candidate when it holds ``experiment.xenium``. It is *complete* when
either it holds the marker file ``xenium-assets.complete`` (for copy tools that can write one last),
or its file listing (names and sizes) is unchanged between two looks. A folder
still being copied changes between looks, so it waits. Each folder is handed out once per content:
the same folder with the same content is never handed out again, whatever restarts in between.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from xenium_assets.fingerprint import stat_fingerprint
from xenium_assets.formats import XeniumFile

COMPLETE_MARKER = "xenium-assets.complete"


def folder_fingerprint(folder: Path) -> str:
    """Hash of every file's relative path and size (stat only: nothing is read).

    Sizes, not times: a file being copied grows, so a copy in progress changes the fingerprint, while
    the same bundle copied in again has the same one and is not processed twice.
    """
    if folder.is_file():  # a single image file: its size
        return stat_fingerprint([str(folder)], folder.parent, times=False)
    files = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        files += [os.path.join(root, name) for name in sorted(names) if name != COMPLETE_MARKER]
    return stat_fingerprint(files, folder, times=False)


def candidates(landing: Path) -> list[Path]:
    """Bundle folders directly inside the landing directory (those holding experiment.xenium)."""
    if not landing.is_dir():
        return []
    return sorted(p for p in landing.iterdir() if p.is_dir() and (p / XeniumFile.EXPERIMENT).exists())


@dataclass
class LandingState:
    """What earlier looks saw: the last fingerprint of waiting folders, and the folders handed out."""

    waiting: dict[str, str] = field(default_factory=dict)
    done: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"waiting": self.waiting, "done": self.done}

    @classmethod
    def from_json(cls, data: dict | None) -> LandingState:
        data = data or {}
        return cls(waiting=dict(data.get("waiting", {})), done=dict(data.get("done", {})))


def image_candidates(landing: Path) -> list[Path]:
    """TIFF files directly inside an image landing directory."""
    if not landing.is_dir():
        return []
    return sorted(p for p in landing.iterdir() if p.is_file() and p.suffix.lower() in (".tif", ".tiff"))


def look(
    landing: Path, state: LandingState, find: Callable[[Path], list[Path]] = candidates
) -> tuple[list[Path], LandingState]:
    """Complete folders (or files, with ``find=image_candidates``) not handed out before (with this content), and
    the updated state."""
    ready: list[Path] = []
    new = LandingState(waiting={}, done=dict(state.done))
    for folder in find(landing):
        key = str(folder.resolve())
        fingerprint = folder_fingerprint(folder)
        if state.done.get(key) == fingerprint:
            continue
        if (folder / COMPLETE_MARKER).exists() or state.waiting.get(key) == fingerprint:
            ready.append(folder)
            new.done[key] = fingerprint
        else:
            new.waiting[key] = fingerprint
    return ready, new
