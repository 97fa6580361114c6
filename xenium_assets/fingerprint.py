"""Cheap fingerprints of files from their metadata (nothing is read): what changed since last time?"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path


def stat_fingerprint(files: Iterable[Path | str], root: Path | str, *, times: bool = True, seed: str = "") -> str:
    """sha1 over each file's path relative to ``root``, its size and (with ``times``) its modification time.

    Sizes alone suit a folder being copied (it grows; the same bundle copied again hashes the same); times too
    suit files written in place. Files that do not exist are left out."""
    h = hashlib.sha1(seed.encode())
    for path in files:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        rel = os.path.relpath(path, root)
        h.update(f"{rel}:{st.st_size}:{st.st_mtime_ns};".encode() if times else f"{rel}:{st.st_size};".encode())
    return h.hexdigest()
