"""Cell ids in every form XOA has written them, normalised to one: Python strings.

XOA 1.0 uses integers (1..N), XOA 1.3-1.x arrow binary ('aaaabbbb-1' as bytes) in Parquet, later
releases strings; ``cells.zarr.zip`` stores a (prefix, suffix) uint32 pair whose hex nibbles map to
the letters a-p. All conversions are vectorised.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_SHIFTS = np.array([28, 24, 20, 16, 12, 8, 4, 0], dtype=np.uint32)


def ids_from_prefix(prefix: np.ndarray, suffix: np.ndarray | int = 1) -> np.ndarray:
    """'aaaabbbb-1' strings from uint32 prefixes (each nibble 0..15 becomes a..p)."""
    prefix = np.asarray(prefix, dtype=np.uint32)
    nibbles = ((prefix[:, None] >> _SHIFTS) & 0xF).astype(np.uint8) + ord("a")
    letters = nibbles.view("S8").ravel().astype("U8")
    return np.char.add(np.char.add(letters, "-"), np.broadcast_to(np.asarray(suffix).astype("U"), letters.shape))


def prefix_from_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`ids_from_prefix`: (prefix uint32, suffix int) from 'aaaabbbb-1' strings."""
    ids = np.asarray(ids, dtype="U")
    head = np.char.partition(ids, "-")
    letters = head[:, 0].astype("S8").view(np.uint8).reshape(-1, 8) - ord("a")
    prefix = (letters.astype(np.uint32) << _SHIFTS).sum(axis=1, dtype=np.uint32)
    return prefix, head[:, 2].astype(np.int64)


def normalise_ids(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Cell ids of a Parquet/CSV column (int, binary or string) as an array of Python str objects."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        column = column.cast(pa.large_binary()).cast(pa.large_string())
    elif pa.types.is_integer(column.type):
        column = pc.cast(column, pa.large_string())
    elif pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=object)
