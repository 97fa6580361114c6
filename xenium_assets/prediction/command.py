"""``xenium-assets predict`` without a Dagster instance: the models chosen by name, the image opened, tiles on a
local dask cluster, and a few lines saying what was found."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from xenium_assets.images.source import open_image
from xenium_assets.layout import ProjectPaths
from xenium_assets.model_store import local_tracking_uri
from xenium_assets.parallel import dask_client, dask_runner
from xenium_assets.prediction.models import choose_classifier, choose_segmenter
from xenium_assets.prediction.options import PredictOptions
from xenium_assets.prediction.run import predict_image
from xenium_assets.progress import TqdmProgress


def predict_from_shell(
    paths: ProjectPaths,
    image: Path,
    out: Path,
    *,
    model: str | None = None,
    segmenter: str | None = None,
    pixel_size_um: float | None = None,
    channel: str | int | None = None,
    nucleus_diameter_um: float | None = None,
    workers: int = 2,
    tile_px: int = PredictOptions.tile_px,
    tracking_uri: str | None = None,
    echo: Callable[[str], None] = print,
) -> Iterator[str]:
    """Predict ``image`` into ``out``; yields the summary's lines. Bad input raises a one-line ValueError."""
    uri = tracking_uri or local_tracking_uri(paths.data_dir)
    source = open_image(image, pixel_size_um=pixel_size_um, channel=channel)
    classifier = choose_classifier(paths, uri, model)
    choice, notes = choose_segmenter(paths, uri, segmenter, nucleus_diameter_um)
    echo(f"classifier {classifier.version}, segmenter {choice.version}, {source.shape[1]} x {source.shape[0]} px")
    with dask_client(None, workers, 1, lean=True) as client:
        progress = TqdmProgress()
        result = predict_image(
            source,
            out,
            classifier.folder,
            classifier.version,
            choice,
            dask_runner(client, progress),
            PredictOptions(tile_px=tile_px),
            progress,
        )
    for note in [*notes, *result.notes]:
        yield f"note: {note}"
    if result.intensity_warning:
        yield f"warning: {result.intensity_warning}"
    classes = ", ".join(f"{c} {n:,}" for c, n in result.per_class.items())
    yield (
        f"{result.nuclei:,} nuclei ({classes}) in {result.seconds:.1f} s ({result.nuclei_per_second:.0f} nuclei/s); "
        f"wrote {out}/ (nuclei.parquet, labels.zarr, spatialdata.zarr, overview.png)"
    )
