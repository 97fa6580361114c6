"""The code location: every asset, resource and job of xenium-assets.

Load it with `dagster dev` (workspace.yaml) or `dagster ... -m xenium_assets.definitions`.
"""

from pathlib import Path

from dagster import Definitions

from xenium_assets.defs.cell_labels import cell_labels
from xenium_assets.defs.cell_predictions import cell_predictions
from xenium_assets.defs.checks import label_classes_above_minimum, qc_pass_fraction, shards_match_index
from xenium_assets.defs.compute import DaskResource, PatchGeometry
from xenium_assets.defs.dapi_zarr import dapi_zarr
from xenium_assets.defs.evaluation_report import beats_chance, evaluation_report
from xenium_assets.defs.jobs import JOBS, patch_shards_job
from xenium_assets.defs.label_reference import label_reference
from xenium_assets.defs.nucleus_segmenter import nucleus_segmenter
from xenium_assets.defs.patch_shards import patch_shards
from xenium_assets.defs.qc_adata import qc_adata
from xenium_assets.defs.raw_bundle import raw_bundle
from xenium_assets.defs.resources import ProjectResource
from xenium_assets.defs.schedules import retrain_schedule
from xenium_assets.defs.sensors import automation_sensor, image_landing_sensor, landing_sensor
from xenium_assets.defs.tile_geometry import tile_geometry
from xenium_assets.defs.tracking import EXPERIMENT, mlflow_tracking, tracking_uri
from xenium_assets.defs.trained_model import trained_model
from xenium_assets.layout import default_data_dir

PATCH_SHARDS_JOB = patch_shards_job.name


def build_definitions(data_dir: Path) -> Definitions:
    """All definitions, with the project's data in ``data_dir``."""
    return Definitions(
        assets=[
            raw_bundle,
            qc_adata,
            label_reference,
            cell_labels,
            dapi_zarr,
            tile_geometry,
            patch_shards,
            trained_model,
            evaluation_report,
            nucleus_segmenter,
            cell_predictions,
        ],
        asset_checks=[qc_pass_fraction, label_classes_above_minimum, shards_match_index, beats_chance],
        sensors=[landing_sensor, image_landing_sensor, automation_sensor],
        schedules=[retrain_schedule],
        jobs=JOBS,
        resources={
            "project": ProjectResource(data_dir=str(data_dir)),
            "dask": DaskResource(),
            "patches": PatchGeometry(),
            "mlflow": mlflow_tracking.configured(
                {"experiment_name": EXPERIMENT, "mlflow_tracking_uri": tracking_uri(data_dir)}
            ),
        },
    )


defs = build_definitions(default_data_dir())
