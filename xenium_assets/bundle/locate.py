"""Find every file of a bundle whichever XOA release wrote it, and read its version and pixel size.

Real folders are messy: experiment.xenium may be missing (cropped or re-exported data), the version
string may be unparseable ("R&D" builds), tables may exist as Parquet, CSV or both. The layout is
therefore read from the files present, and the version only decides what the files cannot.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from xenium_assets.bundle.errors import BundleError
from xenium_assets.formats import FOCUS_V2_NAME, FOCUS_V4_DAPI_NAME, MTX_FILES, XeniumFile

ImageLayout = Literal["v1", "v2", "v4"]
_VERSION = re.compile(r"^[xX]enium-(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True)
class BundleFiles:
    """Absolute paths of the files the pipeline reads (None where the bundle lacks an optional one)."""

    root: Path
    experiment: Path | None
    cells: Path
    cell_boundaries: Path
    nucleus_boundaries: Path
    transcripts: Path | None
    matrix: Path
    matrix_format: Literal["h5", "mtx", "zarr"]
    cells_zarr: Path | None
    graphclust: Path | None
    focus: Path
    image_layout: ImageLayout

    def relative(self) -> dict[str, str | None]:
        """File roles -> paths relative to the bundle root (what the manifest stores)."""
        out: dict[str, str | None] = {}
        for role in (
            "experiment",
            "cells",
            "cell_boundaries",
            "nucleus_boundaries",
            "transcripts",
            "matrix",
            "cells_zarr",
            "graphclust",
            "focus",
        ):
            p = getattr(self, role)
            out[role] = None if p is None else p.relative_to(self.root).as_posix()
        return out


@dataclass(frozen=True)
class XoaVersion:
    text: str | None
    """The version string as written (xenium_ranger.version if present, else analysis_sw_version)."""
    numbers: tuple[int, int, int] | None
    """(major, minor, patch), or None when the string is absent or unparseable."""

    @property
    def label(self) -> str:
        return ".".join(map(str, self.numbers)) if self.numbers else "unknown"


def _first(root: Path, *names: str) -> Path | None:
    return next((root / n for n in names if (root / n).exists()), None)


def focus_image(root: Path) -> tuple[Path, ImageLayout]:
    """The first focus image file and the image layout, from the files alone (a bundle given as a DAPI image
    needs no more than this: images.source)."""
    folder = root / XeniumFile.MORPHOLOGY_FOCUS_DIR
    if folder.is_dir():
        if (folder / FOCUS_V4_DAPI_NAME).exists():
            return folder / FOCUS_V4_DAPI_NAME, "v4"
        if (folder / FOCUS_V2_NAME.format(0)).exists():
            return folder / FOCUS_V2_NAME.format(0), "v2"
        found = sorted(p.name for p in folder.glob("*.ome.tif"))
        raise BundleError(
            folder,
            f"no {FOCUS_V2_NAME.format(0)} or {FOCUS_V4_DAPI_NAME} (found: {found or 'nothing'})",
            "copy the morphology_focus folder completely",
        )
    single = root / XeniumFile.MORPHOLOGY_FOCUS_V1
    if single.exists():
        return single, "v1"
    raise BundleError(
        root,
        f"missing morphology image: neither {XeniumFile.MORPHOLOGY_FOCUS_V1} nor {XeniumFile.MORPHOLOGY_FOCUS_DIR}/",
        "copy the bundle's morphology_focus image(s)",
    )


def locate_files(root: str | Path) -> BundleFiles:
    """Map a bundle folder's files to their roles; raise BundleError naming the first missing one."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise BundleError(root, "not a folder", "pass the Xenium output folder (the one holding experiment.xenium)")
    known = [f.value for f in XeniumFile]
    if not any((root / name).exists() for name in known):
        raise BundleError(
            root,
            "empty bundle: no Xenium output files in it",
            "pass the Xenium output folder (the one holding experiment.xenium and cells.parquet)",
        )

    def need(role: str, *names: str) -> Path:
        found = _first(root, *names)
        if found is None:
            raise BundleError(root / names[0], f"missing ({role})", "copy the complete Xenium output folder")
        return found

    cells = need("cell table", XeniumFile.CELLS_PARQUET, XeniumFile.CELLS_CSV)
    cell_b = need("cell boundaries", XeniumFile.CELL_BOUNDARIES_PARQUET, XeniumFile.CELL_BOUNDARIES_CSV)
    nuc_b = need("nucleus boundaries", XeniumFile.NUCLEUS_BOUNDARIES_PARQUET, XeniumFile.NUCLEUS_BOUNDARIES_CSV)
    mtx = root / XeniumFile.MATRIX_MTX_DIR
    if (root / XeniumFile.MATRIX_H5).exists():
        matrix, matrix_format = root / XeniumFile.MATRIX_H5, "h5"
    elif mtx.is_dir() and all((mtx / f).exists() for f in MTX_FILES):
        matrix, matrix_format = mtx, "mtx"
    elif (root / XeniumFile.MATRIX_ZARR).exists():
        matrix, matrix_format = root / XeniumFile.MATRIX_ZARR, "zarr"
    else:
        raise BundleError(
            root / XeniumFile.MATRIX_H5,
            "missing (cell-feature matrix; no MTX folder or Zarr either)",
            "copy cell_feature_matrix.h5 or the cell_feature_matrix/ folder",
        )
    focus, layout = focus_image(root)
    return BundleFiles(
        root=root,
        experiment=_first(root, XeniumFile.EXPERIMENT),
        cells=cells,
        cell_boundaries=cell_b,
        nucleus_boundaries=nuc_b,
        transcripts=_first(root, XeniumFile.TRANSCRIPTS_PARQUET, XeniumFile.TRANSCRIPTS_CSV),
        matrix=matrix,
        matrix_format=matrix_format,
        cells_zarr=_first(root, XeniumFile.CELLS_ZARR),
        graphclust=_first(root, XeniumFile.GRAPHCLUST),
        focus=focus,
        image_layout=layout,
    )


def read_experiment(path: Path | None) -> dict:
    """experiment.xenium as a dict ({} when the bundle has none)."""
    if path is None:
        return {}
    try:
        spec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(
            path, f"not valid JSON ({exc})", "restore experiment.xenium from the instrument output"
        ) from exc
    if not isinstance(spec, dict):
        raise BundleError(path, "is not a JSON object", "restore experiment.xenium from the instrument output")
    return spec


def parse_version(spec: dict) -> XoaVersion:
    """XOA version as spatialdata-io reads it: Xenium Ranger's version wins over analysis_sw_version."""
    ranger = spec.get("xenium_ranger")
    text = (
        ranger.get("version") if isinstance(ranger, dict) and ranger.get("version") else spec.get("analysis_sw_version")
    )
    match = _VERSION.match(str(text)) if text else None
    return XoaVersion(text=text, numbers=tuple(int(g) for g in match.groups()) if match else None)  # type: ignore[arg-type]
