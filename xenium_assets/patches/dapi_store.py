"""The DAPI level-0 image, transcoded once into a chunked Zarr store with a fast codec.

Why: a tile read with a half-patch halo touches the neighbouring 1024² JPEG-2000 tiles, and J2K
tiles decode whole (about 0.13 s each). Reading tiles plus halos straight from the TIFF decodes most
of the slide several times over (`xenium-assets bench patches` measures it); decoding every J2K tile
exactly once into 512² chunks with a fast codec (under 0.5 ms a chunk to read back) makes halos nearly free.

Chunk files are read and written directly (``ChunkFiles``) on the two hot paths; zarr makes the store and
opens it everywhere else.

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
from numcodecs import Blosc, Zstd

from xenium_assets.bundle.image import decode_window, open_plane
from xenium_assets.bundle.manifest import Manifest
from xenium_assets.layout import ZARR_METADATA, DapiFiles, read_json
from xenium_assets.parallel import Runner
from xenium_assets.patches.grid import DapiPlane, target_grid
from xenium_assets.raster import Window, read_window, tile_windows

CHUNK = 512
BLOCK = 2048  # a task: 4 x 4 chunks, aligned with 1024² TIFF tiles
PERCENTILES = (0.5, 1.0, 50.0, 99.0, 99.5, 99.9)
CODEC = zarr.codecs.BloscCodec(cname="lz4", clevel=1, shuffle="bitshuffle", typesize=2)
"""blosc's lz4 on bit-shuffled pixels. Per 512² chunk of the benchmark's slide (encode and write, read and decode,
size against the raw pixels), one process on a busy machine: zstd level 1 1.29 ms, 0.80 ms, 72 %; blosc-lz4
bit-shuffled 1.14 ms, 0.36 ms, 67 %; no codec 0.56 ms, 0.12 ms, 100 %. An extraction reads each chunk about twice
(blocks and halos); the tile phase of the 20k² benchmark took 11.7-13.2 s on blosc and 13.4-15.9 s on zstd (three
interleaved pairs)."""
_SHUFFLE = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
_CODECS = {  # zarr 3's codec configuration -> the same codec in numcodecs
    "blosc": lambda c: Blosc(c["cname"], c["clevel"], _SHUFFLE[c["shuffle"]], c["blocksize"]),
    "zstd": lambda c: Zstd(level=c["level"]),
}


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


def create_store(path: Path, shape: tuple[int, int]) -> None:
    zarr.create_array(
        store=str(path),
        shape=shape,
        chunks=(CHUNK, CHUNK),
        dtype="uint16",
        compressors=CODEC,
        fill_value=0,
        overwrite=True,
    )


class ChunkFiles:
    """The store's chunk files, read and written without zarr's async pipeline.

    zarr 3.1 spent 24.6 ms of CPU reading a 1376² window (a tile block and its halo, 16 chunks) where
    reading and decoding the 16 files costs 12.2 ms, and 58-72 ms writing a 2048² block where encoding and
    writing its files costs 29 ms: 3.2 and 3.5 CPU-s of a 100,000-cell 20k² extraction. The files are zarr's
    own (format 3, keys ``c/<row>/<col>``, little-endian uint16 in one blosc or zstd frame, edge chunks padded
    with the fill value 0; a chunk zarr skipped as empty reads as 0), so zarr reads what this writes and back.
    Stores written with zstd (before blosc was measured faster) still read.
    """

    def __init__(self, path: str | Path, shape: tuple[int, int], codec: Blosc | Zstd) -> None:
        self.root, self.shape, self.codec = Path(path), shape, codec

    @classmethod
    def open(cls, path: str | Path) -> ChunkFiles:
        """The store at ``path``, after checking it has the layout this class reads and writes.

        Its metadata is read as the JSON file it is: through zarr, opening the store cost each tile task 2-17 ms
        of waiting on zarr's event-loop thread."""
        file = Path(path) / ZARR_METADATA
        try:
            meta = json.loads(file.read_bytes())
        except (OSError, ValueError) as error:
            raise ValueError(f"{file}: not readable ({error}); re-materialize dapi_zarr") from error
        codecs = meta["codecs"]
        codec = codecs[-1]["name"]  # the compressor, after the bytes codec
        layout = {
            "format": meta["zarr_format"],
            "dtype": str(meta["data_type"]),
            "chunks": tuple(meta["chunk_grid"]["configuration"]["chunk_shape"]),
            "keys": (meta["chunk_key_encoding"]["name"], meta["chunk_key_encoding"]["configuration"].get("separator")),
            "codecs": [(c["name"], c.get("configuration", {}).get("endian")) for c in codecs],
            "fill": meta["fill_value"],
        }
        expected = {
            "format": 3,
            "dtype": "uint16",
            "chunks": (CHUNK, CHUNK),
            "keys": ("default", "/"),
            "codecs": [("bytes", "little"), (codec, None)],
            "fill": 0,
        }
        if layout != expected or codec not in _CODECS:
            raise ValueError(f"{path}: not a DAPI store as dapi_zarr writes it ({layout}); re-materialize dapi_zarr")
        return cls(path, tuple(meta["shape"]), _CODECS[codec](codecs[-1]["configuration"]))

    def _file(self, row: int, col: int) -> str:
        # A string, not a Path: joining Paths cost 70 µs a 16-chunk read.
        return f"{self.root}/c/{row}/{col}"

    def write_block(self, block: Window, data: np.ndarray) -> None:
        """Write ``data`` at ``block``, which starts on a chunk corner (its far sides may end at the image's)."""
        if block.y0 % CHUNK or block.x0 % CHUNK:
            raise ValueError(f"block {block} does not start on a {CHUNK}-px chunk corner")
        for y in range(0, block.h, CHUNK):
            folder = self.root / "c" / str((block.y0 + y) // CHUNK)
            folder.mkdir(parents=True, exist_ok=True)
            for x in range(0, block.w, CHUNK):
                part = data[y : y + CHUNK, x : x + CHUNK]
                if part.shape != (CHUNK, CHUNK):
                    part = np.pad(part, ((0, CHUNK - part.shape[0]), (0, CHUNK - part.shape[1])))
                encoded = self.codec.encode(np.ascontiguousarray(part, dtype="<u2"))
                (folder / str((block.x0 + x) // CHUNK)).write_bytes(encoded)

    def _chunks(self, win: Window) -> list[tuple[int, int]]:
        """(row, col) of the chunks under ``win``, in the image."""
        height, width = self.shape
        y0, x0 = max(win.y0, 0), max(win.x0, 0)
        y1, x1 = min(win.y0 + win.h, height), min(win.x0 + win.w, width)
        return [(r, c) for r in range(y0 // CHUNK, -(-y1 // CHUNK)) for c in range(x0 // CHUNK, -(-x1 // CHUNK))]

    def _decode(self, row: int, col: int) -> np.ndarray | None:
        """One chunk's pixels; None for a chunk zarr skipped as empty (all fill value, 0)."""
        file = self._file(row, col)
        try:
            with open(file, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        try:
            return np.frombuffer(self.codec.decode(raw), dtype="<u2").reshape(CHUNK, CHUNK)
        except (RuntimeError, ValueError) as error:
            raise ValueError(f"{file}: not a readable chunk ({error}); re-materialize dapi_zarr") from error

    def read(self, win: Window) -> np.ndarray:
        """The pixels of ``win``, 0 where it leaves the image (as ``raster.read_window``), each chunk decoded and
        copied in turn.

        Nothing is kept between windows: a tile's blocks with their halos overlap by a chunk row or column, and
        keeping the chunks a later block needs saved 1,344 of the 20k² benchmark's 3,844 chunk decodes (about
        0.5 CPU-s of 0.35 ms each), but held up to 7 MB on its tiles of four blocks and none on the 10k² slide's of
        one: most of a worker's growth with the slide's size (one process, the largest tile, tracemalloc)."""
        out = np.zeros((win.h, win.w), dtype=np.uint16)
        height, width = self.shape
        for row, col in self._chunks(win):
            chunk = self._decode(row, col)
            if chunk is None:
                continue
            cy, cx = row * CHUNK, col * CHUNK
            ys, ye = max(cy, win.y0, 0), min(cy + CHUNK, win.y0 + win.h, height)
            xs, xe = max(cx, win.x0, 0), min(cx + CHUNK, win.x0 + win.w, width)
            out[ys - win.y0 : ye - win.y0, xs - win.x0 : xe - win.x0] = chunk[ys - cy : ye - cy, xs - cx : xe - cx]
        return out


def blocks(shape: tuple[int, int]) -> list[Window]:
    return tile_windows(shape[0], shape[1], BLOCK)


def transcode_block(source: str, ifd: int, store: str, block: Window, scale: float) -> np.ndarray:
    """Decode the source tiles under ``block`` once, resample if ``scale != 1``, write the block's chunks.

    Returns the block's 65,536-bin intensity histogram (of a 1-in-16 pixel sample). Runs on a dask
    worker: it opens files itself.
    """
    if scale == 1.0:
        data = decode_window(source, ifd, block.slices)
    else:
        with open_plane(source, ifd) as plane:
            # Imported here: scipy.ndimage costs every process that loads this module (each Dagster step, each
            # dask worker) about 0.3 s, and only bundles at another pixel size need it.
            from scipy import ndimage

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
    ChunkFiles.open(store).write_block(block, data)
    # Every 4th pixel each way: percentiles for normalisation do not need all 16x more (bincount of
    # a full 2048² block costs 0.1 s, a sixth of decoding it).
    return np.bincount(data[::4, ::4].ravel(), minlength=65536)


def percentiles_from_histogram(hist: np.ndarray, qs: tuple[float, ...] = PERCENTILES) -> dict[str, float]:
    """Exact percentiles of a uint16 image from its histogram."""
    cdf = np.cumsum(hist)
    total = cdf[-1]
    return {f"p{q:g}": float(np.searchsorted(cdf, q / 100 * total)) for q in qs}


def write_description(folder: Path, store: DapiStore) -> None:
    from xenium_assets.atomic import write_json

    write_json(DapiFiles(Path(folder)).description, asdict(store))


def read_description(folder: Path) -> DapiStore:
    """The DAPI store of the dapi_zarr folder ``folder``: its grid, pixel size and intensity percentiles."""
    data = read_json(DapiFiles(Path(folder)).description)
    data["shape"] = tuple(data["shape"])
    data["source_shape"] = tuple(data["source_shape"])
    data["image_origin_um"] = tuple(data["image_origin_um"])
    return DapiStore(**data)


def transcode_dapi(manifest: Manifest | DapiPlane, out_dir: Path, pixel_size_um: float, run: Runner) -> DapiStore:
    """Write ``out_dir/dapi.zarr`` (atomically: a temporary store renamed at the end) and dapi.json.

    ``manifest`` is a bundle's, or the ``DapiPlane`` of any DAPI image (images.source)."""
    import os
    import shutil

    from xenium_assets.atomic import PARTIAL

    plane = DapiPlane.of(manifest)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = target_grid(plane, pixel_size_um)
    shape, resampled = target.shape, target.resampled
    final = DapiFiles(out_dir).store
    tmp = final.with_name(f".{final.stem}{PARTIAL}{os.getpid()}{final.suffix}")
    create_store(tmp, shape)
    scale = plane.pixel_size_um / pixel_size_um if resampled else 1.0
    source = str(plane.file)
    tasks = [dict(source=source, ifd=plane.ifd, store=str(tmp), block=b, scale=scale) for b in blocks(shape)]
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
        pixel_size_um=target.pixel_size_um,
        source_pixel_size_um=plane.pixel_size_um,
        source_shape=plane.shape,
        image_origin_um=plane.image_origin_um,
        resampled=resampled,
        percentiles=percentiles_from_histogram(hist),
    )
    write_description(out_dir, summary)
    return summary
