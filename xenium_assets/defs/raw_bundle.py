"""``raw_bundle``: a registered Xenium folder, validated, with a manifest for every later asset."""

from dagster import AssetExecutionContext, Config, DataVersion, Failure, MaterializeResult, MetadataValue, asset

from xenium_assets.bundle.errors import BundleError
from xenium_assets.bundle.manifest import write_manifest
from xenium_assets.bundle.validate import inspect_bundle
from xenium_assets.defs.metadata import bullet_list, counts_table
from xenium_assets.defs.partitions import sample_partitions
from xenium_assets.defs.resources import ProjectResource
from xenium_assets.progress import LogProgress


class RawBundleConfig(Config):
    """Overrides for bundles whose own metadata is missing or wrong (they win over the registry's)."""

    pixel_size_um: float | None = None
    """µm per pixel of the morphology image, when experiment.xenium and the OME-XML lack or disagree on it."""
    image_origin_um: list[float] | None = None
    """(x, y) µm of the image's top-left corner; (0, 0) for instrument output, not for cropped exports."""


@asset(
    partitions_def=sample_partitions,
    group_name="bundle",
    kinds={"xenium", "json"},
    description="A registered Xenium output folder: files located, version and pixel size read, DAPI found by "
    "channel name, ids and polygons validated. Writes manifest.json and cell_problems.parquet.",
)
def raw_bundle(context: AssetExecutionContext, config: RawBundleConfig, project: ProjectResource) -> MaterializeResult:
    sample = context.partition_key
    try:
        entry = project.sample(sample)
    except KeyError as exc:
        raise Failure(description=str(exc.args[0]), allow_retries=False) from exc
    pixel_size = config.pixel_size_um if config.pixel_size_um is not None else entry.pixel_size_um
    origin = config.image_origin_um or entry.image_origin_um or (0.0, 0.0)
    try:
        report = inspect_bundle(
            entry.bundle_dir,
            pixel_size_um=pixel_size,
            image_origin_um=(float(origin[0]), float(origin[1])),
            progress=LogProgress(context.log.info),
        )
    except BundleError as exc:
        raise Failure(
            description=str(exc), metadata={"bundle_dir": MetadataValue.path(entry.bundle_dir)}, allow_retries=False
        ) from exc
    files = project.paths.raw_bundle(sample)
    manifest = write_manifest(report, sample, files.folder)
    height, width = report.dapi.shape
    for line in report.problems:
        context.log.warning(line)
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(files.manifest)),
            "bundle_dir": MetadataValue.path(manifest.bundle_dir),
            "xoa_version": manifest.xoa_version,
            "analysis_sw_version": manifest.analysis_sw_version or "absent",
            "image_layout": manifest.image_layout,
            "pixel_size_um": manifest.pixel_size_um,
            "pixel_size_source": manifest.pixel_size_source,
            "image_size": f"{width} x {height} px",
            "dapi": f"{manifest.dapi.file} (channel {manifest.dapi.channel_index} {manifest.dapi.channel_name!r}, "
            f"{manifest.dapi.compression}, tiles {manifest.dapi.tile})",
            "pyramid_levels": len(manifest.dapi.levels),
            "n_cells": manifest.n_cells,
            "n_valid_cells": manifest.n_valid_cells,
            "n_invalid_cells": manifest.n_cells - manifest.n_valid_cells,
            "n_nuclei": manifest.n_nucleus_polygons,
            "n_genes": report.n_genes,
            "n_controls": report.n_controls,
            "feature_types": counts_table(manifest.feature_types, "feature type", "features"),
            "invalid_cells": counts_table(manifest.invalid_cells),
            "flagged_cells": counts_table(manifest.flagged_cells),
            "problems": bullet_list(manifest.problems),
        },
        data_version=DataVersion(report.fingerprint),
    )
