"""Pyramidal, tiled OME-TIFF writing as the Xenium instrument does it.

Level 0 is streamed tile by tile from a generator (never a whole slide in memory); the 2x
sub-resolutions go into SubIFDs. A multi-channel set is one file per channel whose OME-XML lists every
channel with `TiffData/UUID FileName=` pointers (a multi-file OME-TIFF), which is how spatialdata-io
and tifffile find the sibling channels from the first file.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from ome_types import model as ome

from xenium_assets.raster import Window

CODECS = ("jpeg2000", "zlib", "zstd", "lzw", "none")
MIN_LEVEL_SIDE = 256


@dataclass(frozen=True)
class ChannelFile:
    """One channel of a (multi-file) OME-TIFF set."""

    name: str
    filename: str
    uuid: str


def channel_files(names: list[str], filenames: list[str], seed: int) -> list[ChannelFile]:
    """Channel files with UUIDs derived from the seed, so a bundle is byte-reproducible."""
    return [
        ChannelFile(name, fn, f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'xenium-assets/{seed}/{fn}')}")
        for name, fn in zip(names, filenames, strict=True)
    ]


def ome_xml(files: list[ChannelFile], own: int, height: int, width: int, pixel_size: float, channel_id: str) -> str:
    """OME-XML for file ``own`` of the set; ``channel_id`` is a format string taking the index."""
    pixels = ome.Pixels(
        id="Pixels:0",
        dimension_order="XYZCT",
        type="uint16",
        size_x=width,
        size_y=height,
        size_z=1,
        size_c=len(files),
        size_t=1,
        physical_size_x=pixel_size,
        physical_size_y=pixel_size,
        big_endian=False,
        channels=[ome.Channel(id=channel_id.format(i), name=f.name, samples_per_pixel=1) for i, f in enumerate(files)],
        tiff_data_blocks=[
            ome.TiffData(
                first_c=i,
                first_t=0,
                first_z=0,
                ifd=0,
                plane_count=1,
                uuid=ome.TiffData.UUID(file_name=f.filename, value=f.uuid),
            )
            for i, f in enumerate(files)
        ],
    )
    doc = ome.OME(
        images=[ome.Image(id="Image:0", name="morphology_focus", pixels=pixels)],
        uuid=files[own].uuid,
        creator="xenium-assets synth",
    )
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + doc.to_xml()


def pyramid_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """Level shapes, halving until the short side would drop below 256 px (at least one sub-level)."""
    shapes = [(height, width)]
    while len(shapes) == 1 or min(shapes[-1]) // 2 >= MIN_LEVEL_SIDE:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def downsample2(a: np.ndarray) -> np.ndarray:
    """2x2 mean, edge-replicating odd sizes."""
    h, w = a.shape
    a = np.pad(a, ((0, h % 2), (0, w % 2)), mode="edge").astype(np.float32)
    return ((a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) / 4 + 0.5).astype(np.uint16)


def write_pyramid(
    path: Path,
    tiles: Iterable[tuple[Window, np.ndarray]],
    height: int,
    width: int,
    *,
    tile: int,
    description: str,
    pixel_size: float,
    codec: str,
    workers: int,
) -> None:
    """Write one channel: level 0 from row-major ``(window, array)`` tiles, sub-levels into SubIFDs.

    Only the first sub-level (a quarter of the slide) is held in memory while level 0 streams.
    """
    shapes = pyramid_shapes(height, width)
    level1 = np.zeros(shapes[1], dtype=np.uint16)

    def full_tiles() -> Iterator[np.ndarray]:
        for win, arr in tiles:
            level1[win.y0 // 2 : win.y0 // 2 + (win.h + 1) // 2, win.x0 // 2 : win.x0 // 2 + (win.w + 1) // 2] = (
                downsample2(arr)
            )
            if arr.shape != (tile, tile):
                arr = np.pad(arr, ((0, tile - arr.shape[0]), (0, tile - arr.shape[1])))
            yield arr

    compression = None if codec == "none" else codec
    resolution = (1e4 / pixel_size, 1e4 / pixel_size)
    common = dict(
        tile=(tile, tile),
        compression=compression,
        photometric="minisblack",
        metadata=None,
        resolution=resolution,
        resolutionunit="CENTIMETER",
        maxworkers=workers,
    )
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(
            full_tiles(),
            shape=(height, width),
            dtype=np.uint16,
            subifds=len(shapes) - 1,
            description=description,
            software="xenium-assets synth",
            **common,
        )
        level = level1
        for k in range(1, len(shapes)):
            tw.write(level, subfiletype=1, **common)
            if k + 1 < len(shapes):
                level = downsample2(level)
