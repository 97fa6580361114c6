"""Results back where users look: a sample as a SpatialData zarr, or as Xenium Explorer cell groups.

Both read only the project's outputs: the raw bundle's manifest (image, polygons, cell problems), the sample's
labels in the latest label reference, its QC'd expression, and the latest model's test-tile predictions.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from xenium_assets.atomic import PARTIAL, atomic_file
from xenium_assets.bundle.ids import normalise_ids
from xenium_assets.bundle.manifest import Manifest, read_manifest
from xenium_assets.bundle.polygons import ProblemKind, read_cell_problems
from xenium_assets.bundle.tables import read_table
from xenium_assets.formats import Col
from xenium_assets.labels.store import latest_version
from xenium_assets.layout import ExplorerFiles, ProjectPaths

CELLS_REGION = "cell_boundaries"
NOT_LABELLED = "no_label"
FAILED_QC = "failed_qc"
EXPLORER_GROUPINGS = {"label": "expression_labels", "predicted": "predicted_classes", "correct": "prediction_correct"}
"""Xenium Explorer cell-group files: what each groups cells by -> its file's name."""


class ExportError(RuntimeError):
    """A sample cannot be exported; the message says what to materialize."""


@dataclass
class SampleResults:
    """Per cell of the sample (index: cell id): label, confidence, why it has none, prediction, correctness."""

    manifest: Manifest
    cells: pd.DataFrame
    label_version: str | None
    model: str | None


def latest_predictions(paths: ProjectPaths, sample: str) -> tuple[pd.DataFrame | None, str | None]:
    """The latest model's test-tile predictions of ``sample`` (key, label, predicted, cell_id), and the model's
    folder name; None where there is no model, report or prediction for it."""
    latest = paths.read_latest_model()
    if latest is None:
        return None, None
    folder = Path(latest["folder"])
    path = paths.report(folder.name).predictions
    if not path.exists():
        return None, None
    table = pd.read_parquet(path, columns=["key", "sample", "label", "predicted"])
    table = table[table["sample"] == sample]
    if not len(table):
        return None, folder.name
    return table.assign(cell_id=table["key"].str.slice(len(sample) + 1)), folder.name


def sample_results(paths: ProjectPaths, sample: str) -> SampleResults:
    """Every cell of ``sample`` with what the project says about it."""
    raw = paths.raw_bundle(sample)
    if not raw.manifest.exists():
        raise ExportError(f"sample {sample!r} has no raw_bundle in {paths.data_dir}: materialize it first")
    manifest = read_manifest(raw.manifest)
    ids = pd.Index(pd.unique(normalise_ids(read_table(manifest.path("cells"), [Col.CELL_ID])[Col.CELL_ID])))
    cells = pd.DataFrame(index=ids.rename("cell_id"))
    version = latest_version(paths)
    labels_path = paths.sample_labels(sample, version) if version else None
    if labels_path is not None and labels_path.exists():
        labels = pq.read_table(labels_path, columns=["cell_id", "label", "confidence", "excluded_reason"]).to_pandas()
        cells = cells.join(labels.set_index("cell_id"))
    else:
        version = None
        cells[["label", "confidence", "excluded_reason"]] = [None, np.nan, ""]
    # Why a cell has no label: the labels' own reason, else what raw_bundle found invalid, else QC, else none known.
    try:
        problems = read_cell_problems(manifest.cell_problems, ProblemKind.INVALID)
    except ValueError as error:  # written by another version: its reasons are not this version's
        raise ExportError(f"{error}; re-materialize raw_bundle for {sample!r}") from error
    invalid = problems.drop_duplicates("cell_id").set_index("cell_id")["reason"]
    qc_path = paths.qc_adata(sample).adata
    passed_qc = cells.index.isin(ad.read_h5ad(qc_path, backed="r").obs_names) if qc_path.exists() else None
    fallback = pd.Series(NOT_LABELLED, index=cells.index)
    if passed_qc is not None:
        fallback[~passed_qc] = FAILED_QC
    fallback.update(invalid.reindex(cells.index).dropna())
    reason = cells["excluded_reason"].fillna("").astype(str)
    unexplained = cells["label"].isna() & reason.eq("")
    cells["excluded_reason"] = reason.where(~unexplained, fallback)
    cells["passed_qc"] = passed_qc if passed_qc is not None else False
    predictions, model = latest_predictions(paths, sample)
    predicted = predictions.set_index("cell_id")["predicted"] if predictions is not None else None
    cells["predicted"] = predicted.reindex(cells.index) if predicted is not None else None
    cells["correct"] = pd.Series(None, index=cells.index, dtype=object)
    predicted = cells["predicted"].notna() & cells["label"].notna()
    right = cells.loc[predicted, "predicted"] == cells.loc[predicted, "label"]
    cells.loc[predicted, "correct"] = right.map({True: "correct", False: "incorrect"}).to_numpy()
    return SampleResults(manifest, cells, version, model)


def export_explorer(paths: ProjectPaths, sample: str, out_dir: Path) -> dict[str, Path]:
    """Xenium Explorer cell-group CSVs (header ``cell_id,group``): expression labels, predicted classes, and
    correct / incorrect predictions; a file is written only when there is something to put in it."""
    results = sample_results(paths, sample)
    cells = results.cells
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = {
        "label": cells.loc[cells["excluded_reason"].eq(""), "label"].dropna(),  # usable labels only
        "predicted": cells["predicted"].dropna(),
        "correct": cells["correct"].dropna(),
    }
    written = {}
    for name, values in groups.items():
        if not len(values):
            continue
        path = ExplorerFiles(out_dir).groups(EXPLORER_GROUPINGS[name])
        with atomic_file(path) as tmp:
            pd.DataFrame({"cell_id": values.index, "group": values.astype(str).to_numpy()}).to_csv(tmp, index=False)
        written[name] = path
    if not written:
        raise ExportError(f"sample {sample!r} has no labels and no predictions: materialize cell_labels first")
    return written


def _shapes(polys: np.ndarray, owners: np.ndarray, ids: pd.Index, manifest: Manifest):
    """Polygons (full-resolution px) of the cells they belong to as a GeoDataFrame in µm, one row per cell (a
    multinucleate cell's nuclei as one MultiPolygon), indexed by cell id."""
    import geopandas as gpd
    import shapely

    ox, oy = manifest.image_origin_um
    ps = manifest.pixel_size_um
    microns = shapely.transform(polys, lambda xy: xy * ps + np.array([ox, oy]))
    frame = gpd.GeoDataFrame({"cell_id": np.asarray(ids)[owners - 1]}, geometry=microns)
    frame = frame.dissolve(by="cell_id") if frame["cell_id"].duplicated().any() else frame.set_index("cell_id")
    frame.index = frame.index.astype(str)
    return frame


def export_spatialdata(paths: ProjectPaths, sample: str, out: Path) -> Path:
    """A SpatialData zarr: the DAPI image (a lazy multiscale of the bundle's full-resolution plane, µm coordinates),
    cell and nucleus boundaries as shapes, and a table (QC'd counts; label, confidence, exclusion reason and, on the
    test tiles, the predicted class) annotating the cell boundaries. Written beside ``out`` and moved into place."""
    import dask.array as da
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel
    from spatialdata.transformations import Scale, Sequence, Translation

    from xenium_assets.slide import DapiPyramid, read_geometry

    results = sample_results(paths, sample)
    manifest, cells = results.manifest, results.cells
    geometry = read_geometry(manifest)
    ox, oy = manifest.image_origin_um
    ps = manifest.pixel_size_um
    to_um = Sequence([Scale([ps, ps], axes=("y", "x")), Translation([oy, ox], axes=("y", "x"))])
    with DapiPyramid(manifest) as pyramid:
        level0 = da.from_zarr(pyramid.levels[0])
        factors = [2] * max(0, len(pyramid.levels) - 1)
        image = Image2DModel.parse(
            level0[None], dims=("c", "y", "x"), scale_factors=factors or None, transformations={"global": to_um}
        )
        shapes = {
            CELLS_REGION: ShapesModel.parse(
                _shapes(geometry.cells.polygons, geometry.cells.labels, geometry.ids, manifest)
            )
        }
        if geometry.nuclei is not None and len(geometry.nuclei.polygons):
            shapes["nucleus_boundaries"] = ShapesModel.parse(
                _shapes(geometry.nuclei.polygons, geometry.nuclei.labels, geometry.ids, manifest)
            )
        table = _table(paths, sample, cells, shapes[CELLS_REGION].index)
        sdata = SpatialData(images={"dapi": image}, shapes=shapes, tables={"table": table})
        partial = out.with_name(f"{PARTIAL}{out.name}")
        shutil.rmtree(partial, ignore_errors=True)
        sdata.write(partial, overwrite=True)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


def _table(paths: ProjectPaths, sample: str, cells: pd.DataFrame, shaped: pd.Index):
    """Cells with a boundary: their QC'd counts (zeros where QC left them out, ``passed_qc`` False) and what the
    project says about them."""
    from scipy import sparse
    from spatialdata.models import TableModel

    qc_path = paths.qc_adata(sample).adata
    obs = cells.reindex(shaped).reset_index().rename(columns={"index": "cell_id"})
    obs["cell_id"] = obs["cell_id"].astype(str)
    if qc_path.exists():
        qc = ad.read_h5ad(qc_path)
        counts = sparse.csr_matrix(qc.layers.get("counts", qc.X))
        rows = pd.Index(qc.obs_names.astype(str)).get_indexer(obs["cell_id"])
        found = rows >= 0  # the cells that passed QC
        padded = sparse.vstack([counts, sparse.csr_matrix((1, qc.n_vars), dtype=counts.dtype)]).tocsr()
        matrix = padded[np.where(found, rows, counts.shape[0])]  # a cell QC left out gets the zero row
        var = qc.var[[]].copy()
    else:
        found = np.zeros(len(obs), dtype=bool)
        matrix = sparse.csr_matrix((len(obs), 0), dtype=np.float32)
        var = pd.DataFrame(index=pd.Index([], dtype=str))
    obs["region"] = pd.Categorical([CELLS_REGION] * len(obs))
    for column in ("label", "predicted", "excluded_reason", "correct"):  # "" where there is none
        obs[column] = pd.Categorical(obs[column].astype(object).where(obs[column].notna(), "").astype(str))
    obs.index = obs["cell_id"].to_numpy()
    table = ad.AnnData(X=sparse.csr_matrix(matrix), obs=obs, var=var)
    return TableModel.parse(table, region=CELLS_REGION, region_key="region", instance_key="cell_id")
