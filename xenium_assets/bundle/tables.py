"""Read a bundle's tables (Parquet or CSV) and the index of its cell-feature matrix.

Only the columns asked for are read, with pyarrow; a file that cannot be read raises a BundleError
naming it, whatever the underlying library said.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from xenium_assets.bundle.errors import BundleError
from xenium_assets.bundle.ids import normalise_ids


def read_table(path: Path, columns: list[str], optional: tuple[str, ...] = ()) -> pa.Table:
    """Columns of a Parquet or .csv.gz table; ``optional`` columns are read when present."""
    try:
        if path.name.endswith(".parquet"):
            names = pq.read_schema(path).names
        else:
            with gzip.open(path, "rt") as f:
                names = f.readline().strip().replace('"', "").split(",")
    except Exception as exc:
        kind = "Parquet" if path.name.endswith(".parquet") else "gzip CSV"
        raise BundleError(
            path, f"corrupt {kind} ({type(exc).__name__}: {exc})", "re-copy the file from the instrument output"
        ) from exc
    missing = [c for c in columns if c not in names]
    if missing:
        raise BundleError(
            path,
            f"lacks column(s) {', '.join(missing)} (has: {', '.join(names)})",
            "re-copy the file; it does not look like XOA output",
        )
    wanted = columns + [c for c in optional if c in names]
    try:
        if path.name.endswith(".parquet"):
            return pq.read_table(path, columns=wanted)
        opts = pacsv.ConvertOptions(include_columns=wanted, column_types={"cell_id": pa.string()})
        return pacsv.read_csv(path, convert_options=opts)
    except Exception as exc:
        raise BundleError(
            path, f"cannot be read ({type(exc).__name__}: {exc})", "re-copy the file from the instrument output"
        ) from exc


def unreadable(path: Path) -> str | None:
    """Why a table or zip the core pipeline can do without cannot be opened (None if it can).

    Only its header is read (a transcripts table holds up to 10^8 rows); ``raw_bundle`` reports the
    reason as a problem instead of refusing a bundle whose matrix, boundaries and image are fine.
    """
    import zipfile

    try:
        if path.name.endswith(".parquet"):
            pq.read_schema(path)
        elif path.name.endswith(".gz"):
            with gzip.open(path, "rt") as f:
                f.readline()
        elif path.name.endswith(".zip") and not zipfile.is_zipfile(path):
            return f"{path}: not a zip file; re-copy it from the instrument output"
    except Exception as exc:
        return f"{path}: unreadable ({type(exc).__name__}: {exc}); re-copy it from the instrument output"
    return None


@dataclass(frozen=True)
class MatrixIndex:
    """Barcodes (cell ids) and features of a cell-feature matrix, without its values."""

    barcodes: np.ndarray
    feature_names: np.ndarray
    feature_types: np.ndarray


def read_matrix_index(path: Path, fmt: str) -> MatrixIndex:
    """Barcodes and features of ``cell_feature_matrix.h5``, the MTX folder or the Explorer Zarr."""
    try:
        if fmt == "h5":
            with h5py.File(path, "r") as f:
                m = f["matrix"]
                barcodes = m["barcodes"][:]
                names = m["features/name"][:]
                types = m["features/feature_type"][:]
                shape = m["shape"][:]
            if shape[1] != len(barcodes) or shape[0] != len(names):
                raise BundleError(
                    path,
                    f"matrix shape {tuple(shape)} disagrees with {len(names)} features x {len(barcodes)} barcodes",
                    "re-copy the file",
                )
            return MatrixIndex(
                normalise_ids(pa.array(barcodes.tolist(), pa.binary())),
                np.char.decode(names.astype("S")).astype(object),
                np.char.decode(types.astype("S")).astype(object),
            )
        if fmt == "zarr":
            import zarr
            from zarr.storage import ZipStore

            from xenium_assets.bundle.ids import ids_from_prefix

            group = zarr.open(ZipStore(path, read_only=True), mode="r")["cell_features"]
            cell_id = group["cell_id"][:]
            ids = ids_from_prefix(cell_id[:, 0], cell_id[:, 1]) if cell_id.ndim == 2 else cell_id.astype(str)
            attrs = group.attrs.asdict()
            return MatrixIndex(
                ids.astype(object),
                np.asarray(attrs["feature_keys"], dtype=object),
                np.asarray(attrs["feature_types"], dtype=object),
            )
        barcodes = np.loadtxt(path / "barcodes.tsv.gz", dtype=str, ndmin=1, delimiter="\t")
        feats = np.loadtxt(path / "features.tsv.gz", dtype=str, ndmin=2, delimiter="\t")
        return MatrixIndex(barcodes.astype(object), feats[:, 1].astype(object), feats[:, 2].astype(object))
    except BundleError:
        raise
    except Exception as exc:
        what = {"h5": "HDF5", "mtx": "MTX folder", "zarr": "Zarr matrix"}[fmt]
        raise BundleError(
            path, f"corrupt {what} ({type(exc).__name__}: {exc})", "re-copy the cell-feature matrix"
        ) from exc
