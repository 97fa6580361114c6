"""One tile of a DAPI-only image: its nuclei segmented, their patches cut as training cut them, their classes
predicted; then, once every tile is done, its part of the label image burnt from the nuclei's polygons.

A tile is read with a halo: every nucleus whose centroid lies in the tile (the nuclei it owns) is whole in it, and so
is every neighbour whose ring or pixels can reach their patches. Each task holds one tile and its halo, so a worker's
memory does not grow with the image. Tasks pickle: they run on dask workers in other processes.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from xenium_assets.atomic import atomic_file
from xenium_assets.patches.dapi_store import ChunkFiles
from xenium_assets.patches.extract import PatchMasks, crop
from xenium_assets.patches.geometry import TileRings
from xenium_assets.patches.grid import PatchSpec
from xenium_assets.patches.masks import NucleusRings
from xenium_assets.raster import PolygonRaster, Window

CHUNK_NUCLEI = 512
"""Nuclei cut and classified at once: about 14 MB of patches and masks."""


@dataclass(frozen=True)
class SegmenterChoice:
    """Which segmenter a task runs: ``learned`` (a checkpoint) or ``classical``, and the nuclei's size."""

    kind: str
    version: str
    nucleus_diameter_um: float
    checkpoint: str | None = None


@dataclass(frozen=True)
class TileTask:
    number: int
    core: Window
    halo: int
    store: str
    pixel_size_um: float
    intensity: tuple[float, float]
    """The whole image's (p1, p99.9): every tile is scaled alike, as training scaled each sample."""
    segmenter: SegmenterChoice
    model_dir: str
    part: str
    """Parquet file this tile's nuclei are written to."""


def _to_device(module) -> None:
    """A network moved to the GPU when there is one (it loads on the CPU; its inputs follow its device), its weights
    in channels-last order: oneDNN's convolutions on a CPU then run 25-30 % faster, with the same logits to 1e-5
    (one thread, bench predict's models: the classifier's 256 patches 0.92 -> 0.66 s, the U-Net on a 2048² tile at
    its scale 1.37 -> 0.97 s; classifying a 4096² area's 4,354 nuclei 16.9 -> 12.6 CPU-s)."""
    import torch

    module.to(device="cuda" if torch.cuda.is_available() else "cpu", memory_format=torch.channels_last)


@functools.lru_cache(maxsize=2)
def _classifier(folder: str):
    from xenium_assets.prediction.classifier import DeployedClassifier

    classifier = DeployedClassifier.load(folder)
    _to_device(classifier.module)
    return classifier


@functools.lru_cache(maxsize=2)
def _learned(checkpoint: str):
    from xenium_assets.segmentation.learned import LearnedSegmenter

    segmenter = LearnedSegmenter.load(checkpoint)
    _to_device(segmenter.module)
    return segmenter


def segment(pixels: np.ndarray, choice: SegmenterChoice, pixel_size_um: float, intensity: tuple[float, float]):
    """Instance labels of a tile's pixels by the chosen segmenter."""
    diameter = choice.nucleus_diameter_um / pixel_size_um
    if choice.kind == "classical":
        from xenium_assets.segmentation.classical import segment_nuclei

        return segment_nuclei(pixels, diameter, intensity_range=intensity)
    return _learned(choice.checkpoint).segment(pixels, diameter, tile=4096, intensity_range=intensity)


def label_polygons(labels: np.ndarray, region: Window) -> tuple[np.ndarray, np.ndarray]:
    """(label values, polygons in image px) of a label image whose top-left pixel is ``region``'s: each label's
    largest connected part, its outline along pixel edges, holes filled, so burning the polygon by pixel centres
    gives the label's pixels back.

    rasterio's ``shapes`` is the vectoriser (C, along pixel edges); it yields one polygon at a time, so building
    them is a Python loop over a tile's nuclei: about 10 µs a nucleus, 2 % of segmenting it."""
    from affine import Affine
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.features import shapes

    values, polygons = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # pixel coordinates are the point
        transform = Affine(1, 0, region.x0, 0, 1, region.y0)
        for geometry, value in shapes(labels.astype(np.int32), mask=labels > 0, connectivity=4, transform=transform):
            values.append(int(value))
            polygons.append(shapely.Polygon(geometry["coordinates"][0]))
    if not values:
        return np.zeros(0, dtype=np.int64), np.array([], dtype=object)
    values_arr, polys = np.asarray(values, dtype=np.int64), np.asarray(polygons, dtype=object)
    order = np.lexsort((-shapely.area(polys), values_arr))
    values_arr, polys = values_arr[order], polys[order]
    first = np.r_[True, values_arr[1:] != values_arr[:-1]]
    return values_arr[first], shapely.simplify(polys[first], 0)


def _rings(polygons: np.ndarray, names: np.ndarray) -> TileRings:
    """The polygons as the patch masks read them: each a nucleus that owns itself."""
    exteriors = shapely.get_exterior_ring(polygons)
    xy = shapely.get_coordinates(exteriors)
    offsets = np.r_[0, np.cumsum(shapely.get_num_coordinates(exteriors))]
    return TileRings.from_ids(names, np.full(len(names), "nucleus", dtype=object), xy[:, 0], xy[:, 1], offsets)


def cut_patches(
    pixels: np.ndarray,
    region: Window,
    polygons: np.ndarray,
    names: np.ndarray,
    owned: np.ndarray,
    spec: PatchSpec,
) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """(rows of the owned nuclei, DAPI patches, masks) a chunk at a time: each owned nucleus's patch centred on its
    centroid, with its nucleus and the ring grown from it, by the code that cut the training patches (``PatchMasks``,
    ``NucleusRings``), each nucleus its own cell. ``pixels``: the image's pixels in ``region``, which holds every
    patch; ``polygons`` (image px) and their distinct ``names``: the owned nuclei and their neighbours."""
    if not owned.any():
        return
    rings = _rings(polygons, names)
    draw = PatchMasks(rings, spec.size_px)
    codes = draw.owners(names[owned])
    centre = shapely.get_coordinates(shapely.centroid(polygons[owned]))
    half = spec.halo_px
    top = np.floor(centre[:, 1] - half + 0.5).astype(np.int64)
    left = np.floor(centre[:, 0] - half + 0.5).astype(np.int64)
    window = Window(
        int(top.min()),
        int(left.min()),
        int(top.max() - top.min()) + spec.size_px,
        int(left.max() - left.min()) + spec.size_px,
    )
    block = NucleusRings(polygons, rings.owner, spec.ring_px).block(window)
    for first in range(0, len(codes), CHUNK_NUCLEI):
        at = slice(first, first + CHUNK_NUCLEI)
        dapi = crop(pixels, top[at] - region.y0, left[at] - region.x0, spec.size_px)
        masks = draw(codes[at], top[at], left[at])
        block.add_rings(masks, codes[at], top[at], left[at])
        yield at, dapi, masks


def predict_tile(task: TileTask) -> dict:
    """Segment, cut and classify the nuclei the tile owns; write them (local ids, centroids and areas in image px,
    polygon, class probabilities) to ``task.part``. Returns counts and each stage's seconds."""
    start = time.perf_counter()
    classifier = _classifier(task.model_dir)
    spec = classifier.spec
    region = task.core.pad(task.halo)
    pixels = ChunkFiles.open(task.store).read(region)
    labels = segment(pixels, task.segmenter, task.pixel_size_um, task.intensity)
    values, polygons = label_polygons(labels, region)
    del labels
    segmented = time.perf_counter()
    centre = shapely.get_coordinates(shapely.centroid(polygons)) if len(polygons) else np.zeros((0, 2))
    core = task.core
    owned = (
        (centre[:, 1] >= core.y0)
        & (centre[:, 1] < core.y0 + core.h)
        & (centre[:, 0] >= core.x0)
        & (centre[:, 0] < core.x0 + core.w)
    )
    names = values.astype(str).astype(object)
    probabilities = np.zeros((int(owned.sum()), len(classifier.classes)), dtype=np.float32)
    for at, dapi, masks in cut_patches(pixels, region, polygons, names, owned, spec):
        probabilities[at] = classifier.probabilities(dapi, masks, *task.intensity)
    kept = polygons[owned]
    table = pa.table(
        {
            "local_id": np.arange(len(kept), dtype=np.int64),
            "centroid_x_px": centre[owned, 0],
            "centroid_y_px": centre[owned, 1],
            "area_px": shapely.area(kept),
            "geometry": shapely.to_wkb(kept),
            **{f"prob_{c}": probabilities[:, i] for i, c in enumerate(classifier.classes)},
        }
    )
    Path(task.part).parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(Path(task.part)) as tmp:
        pq.write_table(table, tmp)
    done = time.perf_counter()
    return {
        "number": task.number,
        "nuclei": len(kept),
        "segmentation_seconds": segmented - start,
        "classification_seconds": done - segmented,
    }


@dataclass(frozen=True)
class LabelTask:
    core: Window
    parts: list[tuple[str, int]]
    """(part file, first nucleus id) of the tile and its neighbours: every nucleus that can reach the tile."""
    labels: str
    """The level-0 label array (zarr) this task writes the tile of."""


def burn_tile(task: LabelTask) -> int:
    """Write the tile of the label image: each nucleus's polygon burnt with its id (first id of its part + its local
    id). The tiles write disjoint chunks, so tasks run in parallel. Returns the labelled pixels."""
    import zarr

    frames = []
    for part, first in task.parts:
        table = pq.read_table(part, columns=["local_id", "geometry"]).to_pandas()
        table["nucleus_id"] = table["local_id"] + first
        frames.append(table)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["nucleus_id", "geometry"])
    out = np.zeros((task.core.h, task.core.w), dtype=np.uint32)
    if len(table):
        raster = PolygonRaster(shapely.from_wkb(table["geometry"].to_numpy()), table["nucleus_id"].to_numpy())
        out = raster.window(task.core)
    array = zarr.open_array(task.labels, mode="r+")
    array[task.core.slices] = out
    return int((out > 0).sum())


def tile_cores(shape: tuple[int, int], tile_px: int) -> list[Window]:
    """Row-major tiles of ``tile_px`` (a multiple of the label chunks) covering the image."""
    height, width = shape
    return [
        Window(y, x, min(tile_px, height - y), min(tile_px, width - x))
        for y in range(0, height, tile_px)
        for x in range(0, width, tile_px)
    ]


def halo_px(spec_context_px: int, nucleus_diameter_px: float) -> int:
    """A tile's halo: the patch and ring context of its nuclei, plus a nucleus, so the neighbours there are whole."""
    return spec_context_px + math.ceil(1.5 * nucleus_diameter_px)
