"""What the viewer shows of a sample, gathered from the project's asset outputs (no napari here).

Only the raw bundle is required; labels, patch shards and predictions are shown when their assets
have been materialized. Predictions exist only for the held-out test tiles: cells the model trained
on would look better than they are, so they are not predicted at all.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from xenium_assets.bundle.ids import normalise_ids
from xenium_assets.bundle.manifest import Manifest, read_manifest
from xenium_assets.export import latest_predictions
from xenium_assets.formats import Col
from xenium_assets.labels.overview import class_codes, class_palette
from xenium_assets.layout import ProjectPaths
from xenium_assets.patches.shards import read_index
from xenium_assets.progress import Progress, no_progress
from xenium_assets.slide import SlideGeometry, read_geometry


class ViewerError(RuntimeError):
    """A sample cannot be shown; the message says what to materialize."""


@dataclass
class ViewData:
    """One sample's image, cells and (when present) labels, predictions and patch index."""

    sample: str
    manifest: Manifest
    geometry: SlideGeometry
    labels: pd.DataFrame | None
    predictions: pd.DataFrame | None
    patches: pd.DataFrame | None
    transcripts: pd.DataFrame | None = None

    @property
    def classes(self) -> list[str]:
        return class_codes(self.labels)[0] if self.labels is not None else []

    @property
    def palette(self) -> dict[str, tuple]:
        return class_palette(self.classes)

    def label_values(self) -> np.ndarray:
        """Ordinal -> expression-label class code (0 for unlabelled cells)."""
        _, codes = class_codes(self.labels)
        return self.geometry.lookup(codes.index, codes.to_numpy())

    def predicted_values(self) -> np.ndarray:
        """Ordinal -> predicted class code, in the expression labels' codes (0 outside the test tiles)."""
        code = {name: i + 1 for i, name in enumerate(self.classes)}
        p = self.predictions
        return self.geometry.lookup(p["cell_id"], p["predicted"].map(code).fillna(0).astype(int))

    def correct_values(self) -> np.ndarray:
        """Ordinal -> 1 if the prediction matches the expression label, 2 if not, 0 if not predicted."""
        p = self.predictions
        return self.geometry.lookup(p["cell_id"], np.where(p["predicted"] == p["label"], 1, 2))


def _labels(paths: ProjectPaths, sample: str) -> pd.DataFrame | None:
    """The sample's labels in the latest label reference, if it has been placed in it."""
    from xenium_assets.labels.store import latest_version

    version = latest_version(paths)
    path = paths.sample_labels(sample, version) if version else None
    if path is None or not path.exists():
        return None
    table = pq.read_table(path).to_pandas()
    return table if len(table) else None


def _patches(paths: ProjectPaths, sample: str, labels: pd.DataFrame | None) -> pd.DataFrame | None:
    """The sample's shard index, with each usable cell's label joined on by cell id (shards hold no labels)."""
    index = read_index(t.folder for t in paths.patch_shards(sample).done_tiles())
    if not len(index) or labels is None:
        return None
    usable = labels.loc[labels["excluded_reason"] == "", ["cell_id", "label"]]
    index = index.merge(usable, on="cell_id", how="inner")
    return index if len(index) else None


def load_view_data(
    paths: ProjectPaths, sample: str, genes: Sequence[str] = (), progress: Progress = no_progress
) -> ViewData:
    """Everything the viewer needs of ``sample`` (and the transcripts of ``genes``); raises ViewerError if its
    raw_bundle is missing or a gene is not in the panel, before any window opens."""
    if not paths.raw_bundle(sample).manifest.exists():
        known = sorted(p.name for p in paths.samples_dir.glob("*") if paths.raw_bundle(p.name).manifest.exists())
        raise ViewerError(
            f"sample {sample!r} has no raw_bundle in {paths.data_dir}: materialize it first "
            f"(`xenium-assets demo`, or the UI){'; samples with one: ' + ', '.join(known) if known else ''}"
        )
    manifest = read_manifest(paths.raw_bundle(sample).manifest)
    progress("read cell and nucleus polygons", 0, 1)
    geometry = read_geometry(manifest)
    progress("read cell and nucleus polygons", 1, 1)
    labels = _labels(paths, sample)
    return ViewData(
        sample=sample,
        manifest=manifest,
        geometry=geometry,
        labels=labels,
        predictions=latest_predictions(paths, sample)[0],
        patches=_patches(paths, sample, labels),
        transcripts=read_transcripts(manifest, genes) if genes else None,
    )


def _batches(path: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    if path.name.endswith(".parquet"):
        yield from pq.ParquetFile(path).iter_batches(batch_size=1 << 20, columns=columns)
    else:
        yield from pacsv.open_csv(path, convert_options=pacsv.ConvertOptions(include_columns=columns))


def read_transcripts(manifest: Manifest, genes: Sequence[str]) -> pd.DataFrame:
    """Transcripts of ``genes`` (gene, row_px, col_px), streamed: a slide's 10^8 rows never sit in memory."""
    path = manifest.path("transcripts")
    if path is None:
        raise ViewerError(f"{manifest.bundle_dir} has no transcripts table: drop the --gene option")
    ox, oy = manifest.image_origin_um
    ps = manifest.pixel_size_um
    genes = list(dict.fromkeys(genes))
    wanted = pa.array(genes, pa.string())
    panel: set[str] = set()
    parts = []
    for batch in _batches(path, [Col.FEATURE_NAME, Col.X_LOCATION, Col.Y_LOCATION]):
        names = batch.column(Col.FEATURE_NAME)
        if not pa.types.is_string(names.type):  # XOA 1 writes binary names
            names = names.cast(pa.string())
        panel.update(pc.unique(names).to_pylist())
        keep = batch.filter(pc.is_in(names, value_set=wanted))
        x, y = keep.column(Col.X_LOCATION).to_numpy(), keep.column(Col.Y_LOCATION).to_numpy()
        kept_names = normalise_ids(keep.column(Col.FEATURE_NAME))
        parts.append(pd.DataFrame({"gene": kept_names, "row_px": (y - oy) / ps, "col_px": (x - ox) / ps}))
    missing = [g for g in genes if g not in panel]
    if missing:
        listed = sorted(panel)
        raise ViewerError(
            f"{', '.join(missing)} not in the panel of {path.name} ({len(listed)} names: {', '.join(listed[:8])}, ...)"
        )
    spots = pd.concat(parts, ignore_index=True)
    return spots.assign(gene=pd.Categorical(spots["gene"], categories=list(genes)))
