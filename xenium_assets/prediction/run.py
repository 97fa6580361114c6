"""A DAPI-only image in, its nuclei and their predicted classes out.

The image is written as a DAPI store at the model's pixel size (as ``dapi_zarr`` writes a bundle's), cut into tiles
that run in parallel (``tiles.predict_tile``: segment, cut patches, classify), numbered, burnt into a label image
tile by tile (``tiles.burn_tile``), and written as GeoParquet, an OME-NGFF label pyramid, a SpatialData zarr and an
overview picture. Everything is written into a folder beside the output and moved into place at the end, so a
killed run leaves the previous result (or nothing), never half of one.
"""

from __future__ import annotations

import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from xenium_assets.atomic import PARTIAL, write_json
from xenium_assets.images.source import HIGH, LOW, ImageSource, intensity_warning, write_image_store
from xenium_assets.layout import PredictionFiles
from xenium_assets.parallel import Runner, thread_runner
from xenium_assets.patches.dapi_store import write_description
from xenium_assets.prediction.classifier import DeployedClassifier
from xenium_assets.prediction.options import LABEL_CHUNK, PredictOptions
from xenium_assets.prediction.tiles import (
    LabelTask,
    SegmenterChoice,
    TileTask,
    burn_tile,
    halo_px,
    predict_tile,
    tile_cores,
)
from xenium_assets.progress import Progress, no_progress


@dataclass
class Prediction:
    """What a prediction found, as its summary JSON and the materialization metadata report it."""

    image: str
    image_px: tuple[int, int]
    pixel_size_um: float
    nuclei: int
    per_class: dict[str, int]
    model_version: str
    segmenter_version: str
    seconds: float
    segmentation_seconds: float
    classification_seconds: float
    notes: list[str] = field(default_factory=list)
    intensity_warning: str | None = None

    @property
    def nuclei_per_second(self) -> float:
        return self.nuclei / max(self.seconds, 1e-9)

    def as_dict(self) -> dict:
        return {**asdict(self), "image_px": list(self.image_px), "nuclei_per_second": self.nuclei_per_second}


def predict_image(
    source: ImageSource,
    out_dir: str | Path,
    classifier_dir: str | Path,
    model_version: str,
    segmenter: SegmenterChoice,
    run: Runner | None = None,
    options: PredictOptions = PredictOptions(),
    progress: Progress = no_progress,
) -> Prediction:
    """Segment and classify every nucleus of ``source``; write ``PredictionFiles(out_dir)``."""
    start = time.perf_counter()
    run = run or thread_runner()
    out = Path(out_dir)
    classifier = DeployedClassifier.load(classifier_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}{PARTIAL}"
    if work.exists():
        shutil.rmtree(work)
    files = PredictionFiles(work)
    try:
        store = write_image_store(source, files.dapi, classifier.spec.pixel_size_um, run)
        dapi = store.dapi
        notes = list(store.notes)
        warning = None
        if not store.blank and dapi.percentiles[HIGH] > dapi.percentiles[LOW]:
            warning = intensity_warning(dapi.percentiles, list(classifier.training_percentiles.values()))
        intensity = (float(dapi.percentiles[LOW]), float(dapi.percentiles[HIGH]))
        cores = [] if store.blank else tile_cores(dapi.shape, options.tile_px)
        halo = halo_px(classifier.spec.context_px, segmenter.nucleus_diameter_um / dapi.pixel_size_um)
        tasks = [
            TileTask(
                number=i,
                core=core,
                halo=halo,
                store=dapi.path,
                pixel_size_um=dapi.pixel_size_um,
                intensity=intensity,
                segmenter=segmenter,
                model_dir=str(classifier.folder),
                part=str(files.part(i)),
            )
            for i, core in enumerate(cores)
        ]
        results = sorted(run(predict_tile, [{"task": t} for t in tasks], "segment and classify"), key=_tile_number)
        counts = np.array([r["nuclei"] for r in results], dtype=np.int64)
        firsts = np.r_[1, 1 + np.cumsum(counts)[:-1]] if len(counts) else np.zeros(0, dtype=np.int64)
        _create_labels(files, dapi.shape)
        label_tasks = [
            LabelTask(core, [(str(files.part(j)), int(firsts[j])) for j in _neighbours(cores, i)], _level(files, 0))
            for i, core in enumerate(cores)
        ]
        list(run(burn_tile, [{"task": t} for t in label_tasks], "label image"))
        levels = _pyramid(files, dapi.shape)
        nuclei = _nuclei_table(files, tasks, firsts, classifier.classes, source, dapi.pixel_size_um)
        nuclei["model_version"] = model_version
        nuclei["segmenter_version"] = segmenter.version
        _write_geoparquet(nuclei, files.nuclei)
        _write_spatialdata(files, nuclei, dapi, levels)
        progress("spatialdata", 1, 1)
        per_class = {c: int((nuclei["predicted_class"] == c).sum()) for c in classifier.classes}
        files.overview.write_bytes(_overview(files, nuclei, classifier.classes, levels, dapi.shape))
        shutil.rmtree(files.parts, ignore_errors=True)
        if not len(nuclei) and not store.blank:
            notes.append(f"{source.path}: no nuclei found")
        prediction = Prediction(
            image=str(source.path),
            image_px=tuple(int(s) for s in source.shape),
            pixel_size_um=float(source.pixel_size_um),
            nuclei=int(len(nuclei)),
            per_class=per_class,
            model_version=model_version,
            segmenter_version=segmenter.version,
            seconds=time.perf_counter() - start,
            segmentation_seconds=float(sum(r["segmentation_seconds"] for r in results)),
            classification_seconds=float(sum(r["classification_seconds"] for r in results)),
            notes=notes,
            intensity_warning=warning,
        )
        write_json(files.summary, prediction.as_dict())
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
        write_description(
            PredictionFiles(out).dapi, replace(dapi, path=str(PredictionFiles(out).dapi / Path(dapi.path).name))
        )
    finally:
        if work.exists():
            shutil.rmtree(work)
    return prediction


def _tile_number(result: dict) -> int:
    return result["number"]


def _neighbours(cores: list, i: int) -> list[int]:
    """Tiles whose nuclei can reach tile ``i``: itself and the tiles touching it (a nucleus is smaller than a
    tile, and it belongs to the tile that holds its centroid)."""
    core = cores[i]
    return [
        j
        for j, other in enumerate(cores)
        if other.y0 <= core.y0 + core.h
        and core.y0 <= other.y0 + other.h
        and other.x0 <= core.x0 + core.w
        and core.x0 <= other.x0 + other.w
    ]


def _level(files: PredictionFiles, level: int) -> str:
    return str(files.labels / str(level))


def _create_labels(files: PredictionFiles, shape: tuple[int, int]) -> None:
    import zarr

    zarr.open_group(str(files.labels), mode="w")
    zarr.create_array(
        store=_level(files, 0), shape=shape, chunks=(LABEL_CHUNK, LABEL_CHUNK), dtype="uint32", fill_value=0
    )


def _pyramid(files: PredictionFiles, shape: tuple[int, int]) -> int:
    """Levels halved (nearest: a label is never averaged) until the longer side fits one chunk; the group's
    OME-NGFF ``multiscales`` metadata. Returns the number of levels."""
    import dask.array as da
    import zarr

    level, side = 0, max(shape)
    while side > LABEL_CHUNK:
        previous = da.from_zarr(_level(files, level))
        level += 1
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="zarr v3 autosharding")  # chunks of 1024² need no shards
            previous[::2, ::2].rechunk(LABEL_CHUNK).to_zarr(_level(files, level))
        side = (side + 1) // 2
    group = zarr.open_group(str(files.labels), mode="r+")
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "name": "nuclei",
            "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
            "datasets": [
                {"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": [2.0**k, 2.0**k]}]}
                for k in range(level + 1)
            ],
        }
    ]
    return level + 1


def _nuclei_table(
    files: PredictionFiles,
    tasks: list[TileTask],
    firsts: np.ndarray,
    classes: list[str],
    source: ImageSource,
    pixel_size_um: float,
):
    """Every tile's nuclei with their global ids, in µm from the image's top-left corner, with the predicted class
    and its probability."""
    import geopandas as gpd
    import shapely

    frames = []
    for task, first in zip(tasks, firsts, strict=True):
        frame = pd.read_parquet(task.part)
        frame.insert(0, "nucleus_id", frame.pop("local_id") + int(first))
        frames.append(frame)
    columns = ["nucleus_id", "centroid_x_px", "centroid_y_px", "area_px", "geometry", *[f"prob_{c}" for c in classes]]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    probs = table[[f"prob_{c}" for c in classes]].to_numpy(dtype=np.float32).reshape(len(table), len(classes))
    polygons = shapely.from_wkb(table["geometry"].to_numpy()) if len(table) else np.array([], dtype=object)
    nuclei = gpd.GeoDataFrame(
        {
            "nucleus_id": table["nucleus_id"].to_numpy(dtype=np.int64),
            "centroid_x_um": table["centroid_x_px"].to_numpy(dtype=float) * pixel_size_um,
            "centroid_y_um": table["centroid_y_px"].to_numpy(dtype=float) * pixel_size_um,
            "area_um2": table["area_px"].to_numpy(dtype=float) * pixel_size_um**2,
            "predicted_class": pd.Categorical(
                np.asarray(classes, dtype=object)[probs.argmax(axis=1)] if len(table) else [], categories=classes
            ),
            **{f"prob_{c}": probs[:, i] for i, c in enumerate(classes)},
            "confidence": probs.max(axis=1) if len(table) else np.zeros(0, dtype=np.float32),
            "pixel_size_um": float(source.pixel_size_um),
        },
        geometry=shapely.transform(polygons, lambda xy: xy * pixel_size_um),
        crs=None,
    )
    return nuclei


def _write_geoparquet(nuclei, path: Path) -> None:
    from xenium_assets.atomic import atomic_file

    with atomic_file(path) as tmp:
        nuclei.to_parquet(tmp, index=False)


def _write_spatialdata(files: PredictionFiles, nuclei, dapi, levels: int) -> None:
    """The image, the label pyramid, the nuclei as shapes and a table of their classes, in µm."""
    import anndata as ad
    import dask.array as da
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, Labels2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Scale

    ps = dapi.pixel_size_um
    to_um = {"global": Scale([ps, ps], axes=("y", "x"))}
    factors = [2] * (levels - 1) or None
    # In the label image's 1,024 px chunks: left to itself the pyramid is cut in 256 px chunks (from the store's 512),
    # and the 10k² bench image's took 29-41 s to write on 2 workers against 8-9 s (the same pixels; bench predict).
    chunks = (1, LABEL_CHUNK, LABEL_CHUNK)
    image = Image2DModel.parse(
        da.from_zarr(dapi.path)[None],
        dims=("c", "y", "x"),
        scale_factors=factors,
        chunks=chunks,
        transformations=to_um,
    )
    labels = Labels2DModel.parse(
        da.from_zarr(_level(files, 0)), dims=("y", "x"), scale_factors=factors, transformations=to_um
    )
    elements: dict = {"images": {"dapi": image}, "labels": {"nucleus_labels": labels}}
    if len(nuclei):
        shapes = nuclei[["nucleus_id", "geometry"]].set_index("nucleus_id")
        shapes.index = shapes.index.astype(str)
        # Class names may hold characters a table's column names may not (spatialdata validates them): the
        # probabilities go in obsm, in the order of uns["classes"].
        probs = [c for c in nuclei.columns if c.startswith("prob_")]
        obs = pd.DataFrame(nuclei.drop(columns=["geometry", *probs]))
        obs["region"] = pd.Categorical(["nuclei"] * len(obs))
        obs.index = obs["nucleus_id"].astype(str).to_numpy()
        obs["nucleus_id"] = obs.index
        table = ad.AnnData(obs=obs, uns={"classes": [c.removeprefix("prob_") for c in probs]})
        table.obsm["spatial"] = nuclei[["centroid_x_um", "centroid_y_um"]].to_numpy()
        table.obsm["probabilities"] = nuclei[probs].to_numpy()
        elements["shapes"] = {"nuclei": ShapesModel.parse(shapes)}
        elements["tables"] = {
            "table": TableModel.parse(table, region="nuclei", region_key="region", instance_key="nucleus_id")
        }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="zarr v3 autosharding")  # anndata's notice, on the table's arrays
        SpatialData(**elements).write(files.spatialdata, overwrite=True)


def _overview(files: PredictionFiles, nuclei, classes: list[str], levels: int, shape: tuple[int, int]) -> bytes:
    """The nuclei in their predicted classes' colours, from the label pyramid's smallest level, with a legend."""
    import matplotlib.pyplot as plt
    import zarr
    from matplotlib.patches import Patch

    from xenium_assets.plots import png_bytes

    small = np.asarray(zarr.open_array(_level(files, levels - 1), mode="r")[...])
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")(np.arange(len(classes)))[:, :3]
    lookup = np.zeros(int(nuclei["nucleus_id"].max()) + 1 if len(nuclei) else 1, dtype=np.int64)
    if len(nuclei):
        lookup[nuclei["nucleus_id"].to_numpy()] = nuclei["predicted_class"].cat.codes.to_numpy() + 1
    palette = np.vstack([[0.05, 0.05, 0.05], colours])
    rgb = palette[lookup[np.minimum(small, len(lookup) - 1)]]
    fig, ax = plt.subplots(figsize=(7, 7 * shape[0] / max(shape[1], 1) + 0.6))
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    counts = nuclei["predicted_class"].value_counts() if len(nuclei) else pd.Series(dtype=int)
    handles = [Patch(color=colours[i], label=f"{c} ({int(counts.get(c, 0)):,})") for i, c in enumerate(classes)]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    ax.set_title(f"{len(nuclei):,} nuclei, predicted classes", fontsize=9)
    fig.tight_layout()
    return png_bytes(fig)
