"""Validate a bundle: files readable, ids consistent, polygons well-formed, cells on the image.

Bundle-level faults (a missing or corrupt file, no DAPI channel, ids that belong to another bundle,
no cell on the image) raise :class:`BundleError` with one line naming the file and the fix.
Cell-level faults never drop a cell silently: each bad cell gets a reason, counted in the report and
listed in a table that downstream assets use to skip it. Every check is vectorised over all rows.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from xenium_assets.bundle.errors import BundleError
from xenium_assets.bundle.ids import normalise_ids
from xenium_assets.bundle.image import DapiImage, find_dapi
from xenium_assets.bundle.locate import BundleFiles, XoaVersion, locate_files, parse_version, read_experiment
from xenium_assets.bundle.polygons import Boundary, CellProblem, Polygons, ProblemKind, find_faults, group_polygons
from xenium_assets.bundle.tables import read_matrix_index, read_table, unreadable
from xenium_assets.fingerprint import stat_fingerprint
from xenium_assets.formats import CONTROL_FEATURE_TYPES, Col, FeatureType
from xenium_assets.progress import Progress, no_progress

# Reasons a cell cannot be used downstream, and facts worth knowing that do not disqualify it (bundle/polygons.py).
INVALID_REASONS = tuple(p for p in CellProblem if p.kind is ProblemKind.INVALID)
FLAG_REASONS = tuple(p for p in CellProblem if p.kind is ProblemKind.FLAG)
PIXEL_SIZE_TOLERANCE = 1e-3
MIN_SHARED_IDS = 0.5


@dataclass
class BundleReport:
    """Everything the raw_bundle asset learns about a bundle (the manifest is written from this)."""

    files: BundleFiles
    spec: dict
    version: XoaVersion
    dapi: DapiImage
    pixel_size_um: float
    pixel_size_source: str
    image_origin_um: tuple[float, float]
    n_cells: int
    n_valid_cells: int
    id_kind: str
    n_nucleus_polygons: int
    feature_types: dict[str, int]
    invalid: dict[str, int]
    flags: dict[str, int]
    cell_problems: pa.Table
    problems: list[str] = field(default_factory=list)
    fingerprint: str = ""

    @property
    def n_genes(self) -> int:
        return self.feature_types.get(FeatureType.GENE.value, 0)

    @property
    def n_controls(self) -> int:
        return sum(v for k, v in self.feature_types.items() if k in CONTROL_FEATURE_TYPES)


def _resolve_pixel_size(
    spec: dict, dapi: DapiImage, files: BundleFiles, override: float | None, problems: list[str]
) -> tuple[float, str]:
    """Pixel size in µm: config override, else experiment.xenium (as spatialdata-io), else OME."""
    raw = spec.get("pixel_size")
    usable = isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw) and raw > 0
    from_spec = float(raw) if usable else None
    from_ome = dapi.physical_size_um
    if raw is not None and not usable:
        fallback = (
            "the configured value is used"
            if override is not None
            else f"{dapi.file.name}'s {from_ome} µm is used"
            if from_ome
            else "no other source"
        )
        problems.append(
            f"{files.root / 'experiment.xenium'}: pixel_size {raw!r} is not a positive number of µm; {fallback} "
            "(set pixel_size_um to choose)"
        )
    if from_spec and from_ome and abs(from_spec - from_ome) > PIXEL_SIZE_TOLERANCE * from_spec:
        problems.append(
            f"pixel size mismatch: experiment.xenium says {from_spec} µm, {dapi.file.name} says {from_ome} µm"
            + (
                "; the configured value is used"
                if override
                else "; experiment.xenium is used (set pixel_size_um to override)"
            )
        )
    if override is not None:
        if override <= 0:
            raise BundleError(
                files.root, f"configured pixel_size_um {override} is not positive", "set a size in µm per pixel"
            )
        return float(override), "config"
    if from_spec:
        return from_spec, "experiment.xenium"
    if from_ome:
        return from_ome, "ome"
    raise BundleError(
        dapi.file,
        "pixel size unknown: no experiment.xenium pixel_size and no OME PhysicalSizeX",
        "register the sample with a pixel size (xenium-assets add DIR --pixel-size UM) or set pixel_size_um",
    )


def _fingerprint(files: BundleFiles) -> str:
    """Cheap content fingerprint (names, sizes, mtimes): changes when any used file changes."""
    paths = [
        p
        for p in (
            files.experiment,
            files.cells,
            files.cell_boundaries,
            files.nucleus_boundaries,
            files.transcripts,
            files.matrix,
            files.cells_zarr,
            files.graphclust,
        )
        if p is not None
    ]
    paths += sorted(files.focus.parent.glob("*.ome.tif"))
    return stat_fingerprint([q for p in paths for q in (sorted(p.rglob("*")) if p.is_dir() else [p])], files.root)


def inspect_bundle(
    root: str | Path,
    *,
    pixel_size_um: float | None = None,
    image_origin_um: tuple[float, float] = (0.0, 0.0),
    progress: Progress = no_progress,
) -> BundleReport:
    """Locate, read and validate a bundle; raise BundleError if it cannot be used at all."""
    steps = 6
    progress("validate bundle", 0, steps)
    files = locate_files(root)
    problems: list[str] = []
    spec = read_experiment(files.experiment)
    version = parse_version(spec)
    if files.experiment is None:
        problems.append(f"no experiment.xenium: version unknown, image layout {files.image_layout} read from the files")
    elif version.numbers is None:
        problems.append(
            f"unparseable XOA version {version.text!r}: image layout {files.image_layout} read from the files"
        )
    dapi = find_dapi(files.focus)
    problems += dapi.notes
    # Used by min_qv and the viewer only: reported, not fatal.
    problems += [why for f in (files.transcripts, files.cells_zarr) if f is not None and (why := unreadable(f))]
    pixel_size, pixel_source = _resolve_pixel_size(spec, dapi, files, pixel_size_um, problems)
    progress("validate bundle", 1, steps)

    cells = read_table(files.cells, [Col.CELL_ID, Col.X_CENTROID, Col.Y_CENTROID])
    if cells.num_rows == 0:
        raise BundleError(files.cells, "has no cells", "check that the run segmented cells")
    id_type = cells[Col.CELL_ID].type
    id_kind = "integer" if pa.types.is_integer(id_type) else "binary" if pa.types.is_binary(id_type) else "string"
    ids = normalise_ids(cells[Col.CELL_ID])
    n = len(ids)
    reasons: dict[CellProblem, np.ndarray] = {}
    dup = pd.Series(ids).duplicated().to_numpy()
    reasons[CellProblem.DUPLICATE_CELL_ID] = dup
    index = pd.Index(ids[~dup]) if dup.any() else pd.Index(ids)
    row_of_unique = np.flatnonzero(~dup)

    def rows_of(other: np.ndarray) -> np.ndarray:
        """Cell-table row of each id in ``other`` (-1 where the id is not a cell)."""
        pos = index.get_indexer(other)
        return np.where(pos >= 0, row_of_unique[np.maximum(pos, 0)], -1)

    def shared_or_fail(other: np.ndarray, path: Path, what: str) -> np.ndarray:
        pos = rows_of(other)
        found = pos >= 0
        if found.sum() < MIN_SHARED_IDS * min(n, len(other)):
            raise BundleError(
                path,
                f"cell ids do not match {files.cells.name}: {int(found.sum())} of {len(other)} {what} are cells "
                f"(e.g. {other[0]!r} vs {ids[0]!r})",
                "the files come from different runs; re-copy the bundle",
            )
        return pos

    progress("validate bundle", 2, steps)
    matrix = read_matrix_index(files.matrix, files.matrix_format)
    in_matrix = np.zeros(n, dtype=bool)
    pos = shared_or_fail(matrix.barcodes, files.matrix, "matrix barcodes")
    in_matrix[pos[pos >= 0]] = True
    reasons[CellProblem.NOT_IN_MATRIX] = ~in_matrix
    if (pos < 0).any():
        problems.append(f"{int((pos < 0).sum())} matrix barcodes are not in {files.cells.name}")
    feature_types = dict(Counter(matrix.feature_types.tolist()))
    progress("validate bundle", 3, steps)

    def polygons_per_cell(path: Path, boundary: Boundary) -> tuple[Polygons, np.ndarray]:
        """Check one boundary file (a cell problem per polygon fault); returns the polygons and their cell rows."""
        table = read_table(path, [Col.CELL_ID, Col.VERTEX_X, Col.VERTEX_Y], (Col.LABEL_ID,))
        if table.num_rows == 0:
            raise BundleError(path, "has no polygons", "re-copy the file from the instrument output")
        polys = group_polygons(table)
        pos = shared_or_fail(polys.ids, path, f"{boundary} polygons")
        if (pos < 0).any():
            problems.append(f"{int((pos < 0).sum())} polygons in {path.name} belong to no cell")
        for fault, bad in find_faults(polys).items():
            mask = np.zeros(n, dtype=bool)
            mask[pos[(pos >= 0) & bad]] = True
            reasons[CellProblem.polygon(boundary, fault)] = mask
        return polys, pos

    cell_polys, pos = polygons_per_cell(files.cell_boundaries, "cell")
    known = pos >= 0
    reasons[CellProblem.NO_CELL_BOUNDARY] = np.bincount(pos[known], minlength=n) == 0
    progress("validate bundle", 4, steps)
    nuc_polys, npos = polygons_per_cell(files.nucleus_boundaries, "nucleus")
    nuclei_per_cell = np.bincount(npos[npos >= 0], minlength=n)
    reasons[CellProblem.NO_NUCLEUS] = nuclei_per_cell == 0
    reasons[CellProblem.MULTINUCLEATE] = nuclei_per_cell > 1
    progress("validate bundle", 5, steps)

    height, width = dapi.shape
    ox, oy = image_origin_um
    col = (cells[Col.X_CENTROID].to_numpy().astype(np.float64) - ox) / pixel_size
    row = (cells[Col.Y_CENTROID].to_numpy().astype(np.float64) - oy) / pixel_size
    with np.errstate(invalid="ignore"):
        on_image = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    if not on_image.any():
        raise BundleError(
            dapi.file,
            f"no cell centroid lies on the DAPI image ({width}x{height} px at {pixel_size} µm/px from origin "
            f"{ox},{oy} µm covers x {ox}-{ox + width * pixel_size:.1f}, y {oy}-{oy + height * pixel_size:.1f} µm; "
            f"cells span x {np.nanmin(col) * pixel_size + ox:.1f}-{np.nanmax(col) * pixel_size + ox:.1f} µm)",
            "set pixel_size_um and image_origin_um for this sample",
        )
    reasons[CellProblem.CENTROID_OFF_IMAGE] = ~on_image
    bb = cell_polys.bounds()[known]
    tol = pixel_size / 2  # vertices are float32: a polygon clipped at the image edge may overshoot it by rounding
    outside = (
        (bb[:, 0] < ox - tol)
        | (bb[:, 1] < oy - tol)
        | (bb[:, 2] > ox + width * pixel_size + tol)
        | (bb[:, 3] > oy + height * pixel_size + tol)
    )
    partly = np.zeros(n, dtype=bool)
    partly[pos[known][outside]] = True
    reasons[CellProblem.PARTLY_OFF_IMAGE] = partly & on_image

    rows, reason_col, kind_col = [], [], []
    for reason, mask in reasons.items():
        hit = np.flatnonzero(mask)
        rows.append(hit)
        reason_col.append(np.full(len(hit), reason.value, dtype=object))
        kind_col.append(np.full(len(hit), reason.kind.value, dtype=object))
    hits = np.concatenate(rows)
    cell_problems = pa.table(
        {
            "cell_id": pa.array(ids[hits].tolist(), pa.string()),
            "reason": pa.array(np.concatenate(reason_col).tolist(), pa.string()),
            "kind": pa.array(np.concatenate(kind_col).tolist(), pa.string()),
        }
    )
    invalid = {r.value: int(reasons[r].sum()) for r in INVALID_REASONS if reasons[r].any()}
    any_invalid = np.logical_or.reduce([reasons[r] for r in INVALID_REASONS])
    flags = {r.value: int(reasons[r].sum()) for r in FLAG_REASONS if reasons[r].any()}
    if invalid:
        problems.append("invalid cells: " + ", ".join(f"{v} {k}" for k, v in invalid.items()))
    progress("validate bundle", steps, steps)
    return BundleReport(
        files=files,
        spec=spec,
        version=version,
        dapi=dapi,
        pixel_size_um=pixel_size,
        pixel_size_source=pixel_source,
        image_origin_um=(float(ox), float(oy)),
        n_cells=n,
        n_valid_cells=int(n - any_invalid.sum()),
        id_kind=id_kind,
        n_nucleus_polygons=len(nuc_polys),
        feature_types=feature_types,
        invalid=invalid,
        flags=flags,
        cell_problems=cell_problems,
        problems=problems,
        fingerprint=_fingerprint(files),
    )
