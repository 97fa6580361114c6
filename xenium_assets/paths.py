"""Where the project keeps its state: one data folder, laid out the same way for every user.

data/
  dagster_home/        DAGSTER_HOME (the project's dagster.yaml, SQLite run and event storage)
  samples/<key>/       one folder per registered sample
    sample.json        which bundle the sample is, and per-sample overrides (registry)
    raw_bundle/        manifest.json, cell_problems.parquet
    cell_labels/       <reference version>.parquet: the sample's labels in that reference; overview.png
    <asset>/           every other per-sample asset's files
  labels/reference/    latest.json, and one folder per reference version (label_reference)
  models/<run id>/     trained models; latest.json names the newest
  reports/<run id>/    evaluation reports (report.html, metrics.json, predictions.parquet)
  landing/             new Xenium folders for the landing sensor
  demo/                synthetic bundles made by `xenium-assets demo`
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DATA_ENV = "XENIUM_ASSETS_DATA"


def default_data_dir() -> Path:
    """$XENIUM_ASSETS_DATA, else ./data (the repository's data/ when run from its root)."""
    return Path(os.environ.get(DATA_ENV, "data")).resolve()


@dataclass(frozen=True)
class ProjectPaths:
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

    @property
    def latest_reference(self) -> Path:
        """JSON naming the newest label reference's version."""
        return self.references_dir / "latest.json"

    def sample_labels(self, key: str, version: str) -> Path:
        """A sample's labels in the reference ``version`` (cell_labels)."""
        return self.asset_dir(key, "cell_labels") / f"{version}.parquet"

    def sample_overview(self, key: str) -> Path:
        """A sample's DAPI with its cells in their label's colour (cell_labels)."""
        return self.asset_dir(key, "cell_labels") / "overview.png"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def latest_model(self) -> Path:
        """JSON naming the newest trained model's folder and MLflow run."""
        return self.models_dir / "latest.json"

    def report_dir(self, model: str) -> Path:
        """Evaluation report of the model in ``models/<model>``."""
        return self.data_dir / "reports" / model

    @property
    def demo_dir(self) -> Path:
        return self.data_dir / "demo"

    def sample_dir(self, key: str) -> Path:
        return self.samples_dir / key

    def asset_dir(self, key: str, asset: str) -> Path:
        """Output folder of a per-sample asset."""
        return self.sample_dir(key) / asset
