"""The store's layout: every folder and file the project writes, named once, in the spirit of spatialdata-io's
``XeniumKeys``. Nothing else in the package spells one of these names (a test checks it).

data/
  dagster_home/             DAGSTER_HOME (the project's dagster.yaml, SQLite run and event storage)
  samples/<key>/            one folder per registered sample
    sample.json             which bundle the sample is, and per-sample overrides (registry)
    raw_bundle/             manifest.json, cell_problems.parquet                       RawBundleFiles
    qc_adata/               adata.h5ad, qc.json                                        QcFiles
    dapi_zarr/              dapi.zarr (multiscale DAPI), dapi.json (its grid)          DapiFiles
    tile_geometry/          cells.parquet, tiles/<tile>.arrow (polygons per tile)      GeometryFiles
    cell_labels/            <reference version>.parquet, overview.png                  LabelFiles
    patch_shards/<tile>/    shard-NNNNN.tar, index.parquet, summary.json (its totals)   TileShardFiles
  labels/reference/         latest.json; <version>/ reference.json, .npz, cells, markers  ReferenceFiles
  models/<run id>/          best.ckpt, model.json, split.parquet, history.csv, shards.txt;
                            latest.json names the newest                               ModelFiles
  reports/<run id>/         report.html, report.md, metrics.json, predictions.parquet, figures  ReportFiles
  segmenters/<run id>/      segmenter.ckpt, segmenter.json, history.csv, per_image.csv;
                            latest.json names the newest                               SegmenterFiles
  images/<key>/             image.json: a DAPI-only image added with add-image (its path, pixel size, channel)
  predictions/<key>/        nuclei.parquet, labels.zarr, spatialdata.zarr, overview.png,
                            prediction.json, dapi/                                     PredictionFiles
  landing/                  new Xenium folders for the landing sensor
  demo/                     synthetic bundles made by `xenium-assets demo`
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

DATA_ENV = "XENIUM_ASSETS_DATA"
DAGSTER_CONFIG = "dagster.yaml"
"""The Dagster instance's configuration: the repository's copy is installed into dagster_home."""
SAMPLE_ENTRY = "sample.json"
IMAGE_ENTRY = "image.json"
IMAGE_LANDING = "images"
"""The folder inside the landing directory where DAPI-only images (TIFF files) are dropped for prediction."""
"""The record of an added DAPI-only image in ``images/<key>/``: its path, pixel size and channel."""
"""The registry's record of a sample in ``samples/<key>/``: which bundle, per-sample overrides."""
BENCH_VIEW_SCREENSHOT = "bench_view_first_view.png"
"""``bench view``'s first view, kept in the benchmark's cache to look at."""
ZARR_METADATA = "zarr.json"
"""A zarr v3 node's metadata (zarr's name; the DAPI store's reader opens it directly)."""


class SampleAsset(StrEnum):
    """Per-sample assets; each writes into ``samples/<key>/<asset>/``."""

    RAW_BUNDLE = "raw_bundle"
    QC_ADATA = "qc_adata"
    DAPI_ZARR = "dapi_zarr"
    TILE_GEOMETRY = "tile_geometry"
    CELL_LABELS = "cell_labels"
    PATCH_SHARDS = "patch_shards"


class ShardMember(StrEnum):
    """The members of one cell's sample in a WebDataset shard (``<key>.<member>``)."""

    DAPI = "dapi.npy"
    MASK = "mask.npy"
    META = "json"


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@dataclass(frozen=True)
class RawBundleFiles:
    """raw_bundle: the validated bundle's manifest, and every cell that cannot be used or is worth a flag."""

    folder: Path

    @property
    def manifest(self) -> Path:
        return self.folder / "manifest.json"

    @property
    def cell_problems(self) -> Path:
        return self.folder / "cell_problems.parquet"


@dataclass(frozen=True)
class QcFiles:
    """qc_adata: the QC'd AnnData and the QC's numbers (with the fingerprint of the bundle it came from)."""

    folder: Path

    @property
    def adata(self) -> Path:
        return self.folder / "adata.h5ad"

    @property
    def summary(self) -> Path:
        return self.folder / "qc.json"

    def read_summary(self) -> dict:
        return read_json(self.summary)


@dataclass(frozen=True)
class DapiFiles:
    """dapi_zarr: the multiscale DAPI store, and its description (grid, pixel size, intensity percentiles)."""

    folder: Path

    @property
    def store(self) -> Path:
        return self.folder / "dapi.zarr"

    @property
    def description(self) -> Path:
        return self.folder / "dapi.json"


@dataclass(frozen=True)
class GeometryFiles:
    """tile_geometry: one row per cell (centroid, tile, bounds) and each tile's polygons."""

    folder: Path

    @property
    def cells(self) -> Path:
        return self.folder / "cells.parquet"

    @property
    def tiles(self) -> Path:
        return self.folder / "tiles"

    def tile(self, tile: str) -> Path:
        return self.tiles / f"{tile}.arrow"


@dataclass(frozen=True)
class TileShardFiles:
    """One tile's patch shards: the index is written last, so a tile is done exactly when its index exists."""

    folder: Path

    @property
    def index(self) -> Path:
        return self.folder / "index.parquet"

    @property
    def totals(self) -> Path:
        """The tile's numbers: patches, shards, bytes, skipped cells by reason."""
        return self.folder / "summary.json"

    def shard(self, number: int) -> str:
        return f"shard-{number:05d}.tar"

    def shards(self) -> list[Path]:
        return sorted(self.folder.glob("shard-*.tar"))

    def read_totals(self) -> dict:
        return read_json(self.totals)


@dataclass(frozen=True)
class ShardFiles:
    """patch_shards of one sample: a folder per tile."""

    folder: Path

    def tile(self, tile: str) -> TileShardFiles:
        return TileShardFiles(self.folder / tile)

    def done_tiles(self) -> list[TileShardFiles]:
        """The tiles whose index exists, in tile order."""
        return [TileShardFiles(p.parent) for p in sorted(self.folder.glob("*/index.parquet"))]


@dataclass(frozen=True)
class LabelFiles:
    """cell_labels: a sample's labels in each reference version, and its overview picture."""

    folder: Path

    def labels(self, version: str) -> Path:
        return self.folder / f"{version}.parquet"

    def versions(self) -> list[Path]:
        return sorted(self.folder.glob("*.parquet"))

    @property
    def overview(self) -> Path:
        return self.folder / "overview.png"


@dataclass(frozen=True)
class ReferenceFiles:
    """One label reference version: its card, arrays, reference cells and marker genes."""

    folder: Path

    @property
    def card(self) -> Path:
        return self.folder / "reference.json"

    @property
    def arrays(self) -> Path:
        return self.folder / "reference.npz"

    @property
    def cells(self) -> Path:
        return self.folder / "cells.parquet"

    @property
    def markers(self) -> Path:
        return self.folder / "markers.csv"


@dataclass(frozen=True)
class ModelFiles:
    """A trained model: checkpoint, model card, tile split, learning curves and the shards it read."""

    folder: Path

    @property
    def checkpoint(self) -> Path:
        return self.folder / "best.ckpt"

    @property
    def card(self) -> Path:
        return self.folder / "model.json"

    @property
    def split(self) -> Path:
        return self.folder / "split.parquet"

    @property
    def history(self) -> Path:
        return self.folder / "history.csv"

    @property
    def shard_list(self) -> Path:
        return self.folder / "shards.txt"

    def read_card(self) -> dict:
        return read_json(self.card)


@dataclass(frozen=True)
class ReportFiles:
    """An evaluation report: the report itself, its numbers, the test cells' predictions and its figures."""

    folder: Path

    @property
    def html(self) -> Path:
        return self.folder / "report.html"

    @property
    def markdown(self) -> Path:
        return self.folder / "report.md"

    @property
    def metrics(self) -> Path:
        return self.folder / "metrics.json"

    @property
    def predictions(self) -> Path:
        return self.folder / "predictions.parquet"

    @staticmethod
    def figure(name: str) -> str:
        """A figure's file name, relative to the report (as the report links it)."""
        return f"{name}.png"

    def read_metrics(self) -> dict:
        return read_json(self.metrics)


@dataclass(frozen=True)
class SegmenterFiles:
    """A trained nucleus segmenter: checkpoint (the best on validation), card (settings, training images,
    figures) and its validation history."""

    folder: Path

    @property
    def checkpoint(self) -> Path:
        return self.folder / "segmenter.ckpt"

    @property
    def card(self) -> Path:
        return self.folder / "segmenter.json"

    @property
    def history(self) -> Path:
        return self.folder / "history.csv"

    @property
    def per_image(self) -> Path:
        """Per-image figures of its evaluation: held-out reference images (the benchmark), or test windows of the
        Xenium samples (nucleus_segmenter)."""
        return self.folder / "per_image.csv"

    def read_card(self) -> dict:
        return read_json(self.card)


@dataclass(frozen=True)
class PredictionFiles:
    """A DAPI-only image's nuclei and predicted classes (``xenium-assets predict``'s OUT, or an image's
    ``cell_predictions`` folder)."""

    folder: Path

    @property
    def nuclei(self) -> Path:
        """GeoParquet: one row per nucleus, its polygon in µm, its class probabilities."""
        return self.folder / "nuclei.parquet"

    @property
    def labels(self) -> Path:
        """The nuclei as a label image (nucleus_id), an OME-NGFF multiscale zarr."""
        return self.folder / "labels.zarr"

    @property
    def spatialdata(self) -> Path:
        return self.folder / "spatialdata.zarr"

    @property
    def overview(self) -> Path:
        return self.folder / "overview.png"

    @property
    def summary(self) -> Path:
        return self.folder / "prediction.json"

    @property
    def end_to_end(self) -> Path:
        """Segmentation and classification scores against the image's own Xenium sample, when it is a held-out one."""
        return self.folder / "end_to_end.json"

    @property
    def dapi(self) -> Path:
        """The image as a DAPI store at the model's pixel size (as dapi_zarr writes a bundle's)."""
        return self.folder / "dapi"

    @property
    def parts(self) -> Path:
        """Each tile's nuclei while the prediction runs."""
        return self.folder / ".parts"

    def part(self, number: int) -> Path:
        return self.parts / f"tile-{number:05d}.parquet"

    def read_summary(self) -> dict:
        return read_json(self.summary)


@dataclass(frozen=True)
class ExplorerFiles:
    """Xenium Explorer cell groups written by ``xenium-assets export --to explorer``: one CSV per grouping."""

    folder: Path

    def groups(self, grouping: str) -> Path:
        return self.folder / f"{grouping}.csv"


def default_data_dir() -> Path:
    """$XENIUM_ASSETS_DATA, else ./data (the repository's data/ when run from its root)."""
    return Path(os.environ.get(DATA_ENV, "data")).resolve()


@dataclass(frozen=True)
class ProjectPaths:
    """The project's folders, and each asset's files."""

    data_dir: Path

    @classmethod
    def default(cls) -> ProjectPaths:
        return cls(default_data_dir())

    @property
    def dagster_home(self) -> Path:
        return self.data_dir / "dagster_home"

    @property
    def samples_dir(self) -> Path:
        return self.data_dir / "samples"

    @property
    def landing_dir(self) -> Path:
        """Where new Xenium output folders are dropped for the landing sensor."""
        return self.data_dir / "landing"

    @property
    def demo_dir(self) -> Path:
        return self.data_dir / "demo"

    def sample_dir(self, key: str) -> Path:
        return self.samples_dir / key

    def asset_dir(self, key: str, asset: SampleAsset) -> Path:
        """Output folder of a per-sample asset."""
        return self.sample_dir(key) / SampleAsset(asset)

    def raw_bundle(self, key: str) -> RawBundleFiles:
        return RawBundleFiles(self.asset_dir(key, SampleAsset.RAW_BUNDLE))

    def qc_adata(self, key: str) -> QcFiles:
        return QcFiles(self.asset_dir(key, SampleAsset.QC_ADATA))

    def dapi_zarr(self, key: str) -> DapiFiles:
        return DapiFiles(self.asset_dir(key, SampleAsset.DAPI_ZARR))

    def tile_geometry(self, key: str) -> GeometryFiles:
        return GeometryFiles(self.asset_dir(key, SampleAsset.TILE_GEOMETRY))

    def cell_labels(self, key: str) -> LabelFiles:
        return LabelFiles(self.asset_dir(key, SampleAsset.CELL_LABELS))

    def patch_shards(self, key: str) -> ShardFiles:
        return ShardFiles(self.asset_dir(key, SampleAsset.PATCH_SHARDS))

    def all_labels(self, version: str) -> list[Path]:
        """Every sample's labels in the reference ``version``."""
        return sorted(self.samples_dir.glob(f"*/{SampleAsset.CELL_LABELS}/{version}.parquet"))

    def all_shard_indexes(self) -> list[Path]:
        """Every finished tile's shard index, of every sample."""
        return sorted(self.samples_dir.glob(f"*/{SampleAsset.PATCH_SHARDS}/*/index.parquet"))

    @property
    def labels_dir(self) -> Path:
        return self.data_dir / "labels"

    @property
    def legacy_labels_table(self) -> Path:
        """The one label table of all samples that versions before the label reference wrote (no longer read)."""
        return self.labels_dir / "labels.parquet"

    @property
    def references_dir(self) -> Path:
        return self.labels_dir / "reference"

    def reference_dir(self, version: str) -> Path:
        """A label reference, by version (label_reference)."""
        return self.references_dir / version

    def reference(self, version: str) -> ReferenceFiles:
        return ReferenceFiles(self.reference_dir(version))

    @property
    def latest_reference(self) -> Path:
        """JSON naming the newest label reference's version."""
        return self.references_dir / "latest.json"

    def sample_labels(self, key: str, version: str) -> Path:
        """A sample's labels in the reference ``version`` (cell_labels)."""
        return self.cell_labels(key).labels(version)

    def sample_overview(self, key: str) -> Path:
        """A sample's DAPI with its cells in their label's colour (cell_labels)."""
        return self.cell_labels(key).overview

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    def model(self, run_id: str) -> ModelFiles:
        return ModelFiles(self.models_dir / run_id)

    @property
    def latest_model(self) -> Path:
        """JSON naming the newest trained model's folder and MLflow run."""
        return self.models_dir / "latest.json"

    def read_latest_model(self) -> dict | None:
        """The newest trained model's record (folder, MLflow run, inputs), or None before the first."""
        return read_json(self.latest_model) if self.latest_model.exists() else None

    def report_dir(self, model: str) -> Path:
        """Evaluation report of the model in ``models/<model>``."""
        return self.data_dir / "reports" / model

    def report(self, model: str) -> ReportFiles:
        return ReportFiles(self.report_dir(model))

    @property
    def images_dir(self) -> Path:
        """DAPI-only images added with ``add-image``: one folder per image key."""
        return self.data_dir / "images"

    def image_entry(self, key: str) -> Path:
        return self.images_dir / key / IMAGE_ENTRY

    def predictions(self, key: str) -> PredictionFiles:
        """The nuclei and classes ``cell_predictions`` found in the image ``key``."""
        return PredictionFiles(self.data_dir / "predictions" / key)

    @property
    def segmenters_dir(self) -> Path:
        return self.data_dir / "segmenters"

    def segmenter(self, run_id: str) -> SegmenterFiles:
        """A nucleus segmenter trained by nucleus_segmenter, by its MLflow run."""
        return SegmenterFiles(self.segmenters_dir / run_id)

    @property
    def latest_segmenter(self) -> Path:
        """JSON naming the newest nucleus segmenter's folder, MLflow run and registered version."""
        return self.segmenters_dir / "latest.json"

    def read_latest_segmenter(self) -> dict | None:
        """The newest nucleus segmenter's record, or None before the first."""
        return read_json(self.latest_segmenter) if self.latest_segmenter.exists() else None
