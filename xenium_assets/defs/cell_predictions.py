"""``cell_predictions``: per added DAPI-only image, its nuclei segmented and classified by a registered model.

The work is ``prediction.run.predict_image``: tiles with halos on the dask resource, GeoParquet, a label pyramid, a
SpatialData zarr and an overview picture, written into the image's predictions folder."""

from dagster import AssetExecutionContext, Config, Failure, MaterializeResult, MetadataValue, asset

from xenium_assets.atomic import write_json
from xenium_assets.defs.compute import DaskResource
from xenium_assets.defs.metadata import bullet_list, counts_table, image
from xenium_assets.defs.nucleus_segmenter import nucleus_segmenter
from xenium_assets.defs.partitions import image_partitions
from xenium_assets.defs.resources import ProjectResource
from xenium_assets.defs.trained_model import trained_model
from xenium_assets.layout import ModelFiles, read_json
from xenium_assets.prediction.options import PredictOptions
from xenium_assets.progress import LogProgress


class PredictConfig(Config):
    model: str | None = None
    """NAME/VERSION of a registered classifier; None: the latest version of xenium-dapi-classifier."""
    segmenter: str | None = None
    """"classical", or NAME/VERSION of a registered segmenter; None: the latest registered one, else classical."""
    nucleus_diameter_um: float | None = None
    """The nuclei's diameter; None: the segmenter's training nuclei's."""
    tile_px: int = PredictOptions.tile_px
    """Side of the tiles that run in parallel (a multiple of 1024)."""


@asset(
    partitions_def=image_partitions,
    deps=[trained_model, nucleus_segmenter],
    group_name="prediction",
    kinds={"geoparquet", "zarr"},
    description="Nuclei of a DAPI-only image segmented and classified by a registered model, tile by tile on dask: "
    "nuclei.parquet (GeoParquet), labels.zarr (label pyramid), spatialdata.zarr and an overview picture.",
)
def cell_predictions(
    context: AssetExecutionContext, config: PredictConfig, project: ProjectResource, dask: DaskResource
) -> MaterializeResult:
    # The prediction stack (torch, timm) is imported here, not at module level, for the reason given in trained_model.
    from xenium_assets.model_store import local_tracking_uri
    from xenium_assets.parallel import dask_runner
    from xenium_assets.prediction.evaluate import against_sample
    from xenium_assets.prediction.models import choose_classifier, choose_segmenter
    from xenium_assets.prediction.run import predict_image

    key = context.partition_key
    paths = project.paths
    uri = local_tracking_uri(paths.data_dir)
    try:
        entry = project.images.get(key)
        source = entry.open()
        classifier = choose_classifier(paths, uri, config.model)
        segmenter, notes = choose_segmenter(paths, uri, config.segmenter, config.nucleus_diameter_um)
    except (KeyError, ValueError) as exc:  # no such image, an unreadable one, no such model version
        raise Failure(description=str(exc).strip("'\""), allow_retries=False) from exc
    context.log.info(f"{key}: classifier {classifier.version}, segmenter {segmenter.version}, {source.shape} px")
    files = paths.predictions(key)
    progress = LogProgress(context.log.info)
    try:
        with dask.client(lean=True) as client:
            result = predict_image(
                source,
                files.folder,
                classifier.folder,
                classifier.version,
                segmenter,
                dask_runner(client, progress),
                PredictOptions(tile_px=config.tile_px),
                progress,
            )
    except ValueError as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
    notes += result.notes
    evaluation, why = against_sample(paths, entry.path, files, ModelFiles(classifier.folder).read_card())
    figures = {"end_to_end": why}
    if evaluation is not None:
        write_json(files.end_to_end, {**evaluation.as_dict(), "about": why})
        figures.update({f"end_to_end_{k}": v for k, v in evaluation.as_dict().items()})
        report = paths.report(classifier.folder.name).metrics
        if report.exists():  # the classifier's own test result, beside it: the gap is the cost of segmenting
            figures["classifier_test_macro_f1"] = read_json(report)["test_macro_f1"]
        context.log.info(
            f"end to end on {why}: segmentation F1 {evaluation.segmentation_f1:.3f}, macro-F1 "
            f"{evaluation.macro_f1:.3f} [{evaluation.macro_f1_ci_low:.3f}, {evaluation.macro_f1_ci_high:.3f}]"
        )
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(files.folder)),
            "nuclei": result.nuclei,
            "nuclei_per_class": counts_table(result.per_class, "class", "nuclei"),
            "overview": image(files.overview.read_bytes(), "predicted classes"),
            "model_version": result.model_version,
            "segmenter_version": result.segmenter_version,
            "image": entry.path,
            "image_px": f"{result.image_px[1]} x {result.image_px[0]}",
            "pixel_size_um": result.pixel_size_um,
            "seconds": round(result.seconds, 1),
            "nuclei_per_second": round(result.nuclei_per_second, 1),
            "segmentation_seconds": round(result.segmentation_seconds, 1),
            "classification_seconds": round(result.classification_seconds, 1),
            "notes": bullet_list(notes),
            "intensity_warning": result.intensity_warning or "within the training samples' range",
            **figures,
        }
    )
