"""Named jobs: what the demo, the commands, the landing sensor and the schedule launch, so the Runs page and MLflow
say what ran (an unnamed selection runs as ``__ASSET_JOB`` or ``__ephemeral_asset_job__``)."""

from dagster import AssetSelection, define_asset_job

from xenium_assets.defs.cell_labels import cell_labels
from xenium_assets.defs.cell_predictions import cell_predictions
from xenium_assets.defs.dapi_zarr import dapi_zarr
from xenium_assets.defs.evaluation_report import evaluation_report
from xenium_assets.defs.label_reference import label_reference
from xenium_assets.defs.nucleus_segmenter import nucleus_segmenter
from xenium_assets.defs.partitions import image_partitions, sample_partitions, sample_tile_partitions
from xenium_assets.defs.patch_shards import patch_shards
from xenium_assets.defs.qc_adata import qc_adata
from xenium_assets.defs.raw_bundle import raw_bundle
from xenium_assets.defs.tile_geometry import tile_geometry
from xenium_assets.defs.trained_model import trained_model

PER_SAMPLE = [raw_bundle, qc_adata, dapi_zarr, tile_geometry]

ingest_sample_job = define_asset_job(
    "ingest_sample",
    selection=AssetSelection.assets(*PER_SAMPLE),
    partitions_def=sample_partitions,
    description="One sample's bundle validated, its expression QC'd, its DAPI transcoded, its polygons split by tile.",
)
label_reference_job = define_asset_job(
    "build_label_reference",
    selection=AssetSelection.assets(label_reference),
    description="The classes, built once from a sketch of the chosen samples.",
)
cell_labels_job = define_asset_job(
    "label_sample",
    selection=AssetSelection.assets(cell_labels),
    partitions_def=sample_partitions,
    description="One sample's cells placed in the latest label reference.",
)
patch_shards_job = define_asset_job(
    "cut_patch_shards",
    selection=AssetSelection.assets(patch_shards),
    partitions_def=sample_tile_partitions,
    description="Patch shards of a range of (sample, tile) keys, all tiles of a sample in one run.",
)
training_job = define_asset_job(
    "train_and_evaluate",
    selection=AssetSelection.assets(trained_model, evaluation_report),
    tags={"xenium-assets/training": "true"},
    description="The classifier trained on every sample's shards, then its evaluation report.",
)
segmenter_job = define_asset_job(
    "train_segmenter",
    selection=AssetSelection.assets(nucleus_segmenter),
    description="The nucleus segmenter trained on the classifier's training tiles, registered in MLflow.",
)
predict_image_job = define_asset_job(
    "predict_image",
    selection=AssetSelection.assets(cell_predictions),
    partitions_def=image_partitions,
    description="One DAPI-only image's nuclei segmented and classified by the registered model.",
)
JOBS = [
    ingest_sample_job,
    label_reference_job,
    cell_labels_job,
    patch_shards_job,
    training_job,
    segmenter_job,
    predict_image_job,
]
