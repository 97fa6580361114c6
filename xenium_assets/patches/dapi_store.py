"""The DAPI level-0 image, transcoded once into a chunked Zarr store with a fast codec.

Why: a tile read with a half-patch halo touches the neighbouring 1024² JPEG-2000 tiles, and J2K
tiles decode whole (about 0.13 s each). Reading tiles plus halos straight from the TIFF decodes most
of the slide several times over (`xenium-assets bench patches` measures it); decoding every J2K tile
exactly once into 512² zstd chunks (about 2 ms to read back) makes halos nearly free.

The store is at the target pixel size: bundles with another pixel size are resampled (bilinear)
block by block. Each block task also returns the intensity histogram of a 1-in-16 pixel sample, from
which the sample's robust percentiles (for normalisation at training time) are computed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import zarr
from scipy import ndimage

from xenium_assets.bundle.image import open_plane
from xenium_assets.bundle.manifest import Manifest
from xenium_assets.parallel import Runner
from xenium_assets.raster import Window, read_window, tile_windows

CHUNK = 512
BLOCK = 2048  # a task: 4 x 4 chunks, aligned with 1024² TIFF tiles
PERCENTILES = (0.5, 1.0, 50.0, 99.0, 99.5, 99.9)
SUMMARY = "dapi.json"
STORE = "dapi.zarr"
RESAMPLE_TOLERANCE = 0.005


@dataclass(frozen=True)
class DapiStore:
    """Summary of a transcoded DAPI image (written as dapi.json beside the store)."""

    path: str
    shape: tuple[int, int]
    pixel_size_um: float
    source_pixel_size_um: float
    source_shape: tuple[int, int]
    image_origin_um: tuple[float, float]
    resampled: bool
    percentiles: dict[str, float]

    def open(self) -> zarr.Array:
        return zarr.open_array(self.path, mode="r")


def target_shape(manifest: Manifest, pixel_size_um: float) -> tuple[tuple[int, int], bool]:
    """Shape of the image at the target pixel size, and whether it differs from the source's."""
    height, width = manifest.dapi.levels[0]
    scale = manifest.pixel_size_um / pixel_size_um
    if abs(scale - 1) <= RESAMPLE_TOLERANCE:
        return (height, width), False
    return (int(round(height * scale)), int(round(width * scale))), True


def create_store(path: Path, shape: tuple[int, int]) -> None:
    zarr.create_array(
        store=str(path),
        shape=shape,
        chunks=(CHUNK, CHUNK),
        dtype="uint16",
        compressors=zarr.codecs.ZstdCodec(level=1),
        fill_value=0,
        overwrite=True,
    )


def blocks(shape: tuple[int, int]) -> list[Window]:
    return tile_windows(shape[0], shape[1], BLOCK)


def transcode_block(source: str, ifd: int, store: str, block: Window, scale: float) -> np.ndarray:
    """Decode the source tiles under ``block`` once, resample if ``scale != 1``, write the block's chunks.

    Returns the block's 65,536-bin intensity histogram (of a 1-in-16 pixel sample). Runs on a dask
    worker: it opens files itself.
    """
    with open_plane(source, ifd) as plane:
        if scale == 1.0:
            data = np.asarray(plane[block.slices])
        else:
            # Output pixel centre (i + 0.5) sits at source coordinate (i + 0.5) / scale - 0.5.
            src = Window(
                int(np.floor(block.y0 / scale)) - 2,
                int(np.floor(block.x0 / scale)) - 2,
                int(np.ceil(block.h / scale)) + 5,
                int(np.ceil(block.w / scale)) + 5,
            )
            region = read_window(plane, src).astype(np.float32)
            ys = (np.arange(block.y0, block.y0 + block.h) + 0.5) / scale - 0.5 - src.y0
            xs = (np.arange(block.x0, block.x0 + block.w) + 0.5) / scale - 0.5 - src.x0
            yy, xx = np.meshgrid(ys, xs, indexing="ij")
            data = ndimage.map_coordinates(region, [yy, xx], order=1, mode="nearest")
            data = np.clip(np.round(data), 0, 65535).astype(np.uint16)
    zarr.open_array(store, mode="r+")[block.slices] = data
    # Every 4th pixel each way: percentiles for normalisation do not need all 16x more (bincount of
    # a full 2048² block costs 0.1 s, a sixth of decoding it).
    return np.bincount(data[::4, ::4].ravel(), minlength=65536)


def percentiles_from_histogram(hist: np.ndarray, qs: tuple[float, ...] = PERCENTILES) -> dict[str, float]:
    """Exact percentiles of a uint16 image from its histogram."""
    cdf = np.cumsum(hist)
    total = cdf[-1]
    return {f"p{q:g}": float(np.searchsorted(cdf, q / 100 * total)) for q in qs}


def write_summary(folder: Path, summary: DapiStore) -> None:
    from xenium_assets.atomic import write_json

    write_json(folder / SUMMARY, asdict(summary))


def read_summary(folder: Path) -> DapiStore:
    data = json.loads((Path(folder) / SUMMARY).read_text())
    data["shape"] = tuple(data["shape"])
    data["source_shape"] = tuple(data["source_shape"])
    data["image_origin_um"] = tuple(data["image_origin_um"])
    return DapiStore(**data)


def transcode_dapi(manifest: Manifest, out_dir: Path, pixel_size_um: float, run: Runner) -> DapiStore:
    """Write ``out_dir/dapi.zarr`` (atomically: a temporary store renamed at the end) and dapi.json."""
    import os
    import shutil

    from xenium_assets.atomic import PARTIAL

    out_dir.mkdir(parents=True, exist_ok=True)
    shape, resampled = target_shape(manifest, pixel_size_um)
    final = out_dir / STORE
    tmp = out_dir / f".dapi{PARTIAL}{os.getpid()}.zarr"
    create_store(tmp, shape)
    scale = manifest.pixel_size_um / pixel_size_um if resampled else 1.0
    source = str(manifest.dapi_path)
    tasks = [dict(source=source, ifd=manifest.dapi.ifd, store=str(tmp), block=b, scale=scale) for b in blocks(shape)]
    try:
        hist = np.zeros(65536, dtype=np.int64)
        for block_hist in run(transcode_block, tasks, "transcode DAPI"):
            hist += block_hist
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    summary = DapiStore(
        path=str(final),
        shape=shape,
        pixel_size_um=pixel_size_um if resampled else manifest.pixel_size_um,
        source_pixel_size_um=manifest.pixel_size_um,
        source_shape=tuple(manifest.dapi.levels[0]),
        image_origin_um=tuple(manifest.image_origin_um),
        resampled=resampled,
        percentiles=percentiles_from_histogram(hist),
    )
    write_summary(out_dir, summary)
    return summary
