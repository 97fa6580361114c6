"""The DAPI store (patches/dapi_store.py): the transcode equals the TIFF; its chunk files agree with zarr."""

from __future__ import annotations

import numpy as np
import pytest

from xenium_assets.bundle.image import open_plane
from xenium_assets.patches.dapi_store import ChunkFiles, create_store
from xenium_assets.raster import Window, read_window, tile_windows


def test_transcoded_store_equals_the_tiff(extracted):
    _, _, manifest, store, _, _ = extracted
    with open_plane(manifest.dapi_path, manifest.dapi.ifd) as plane:
        np.testing.assert_array_equal(store.open()[:], plane[:])
    assert store.percentiles["p1"] < store.percentiles["p50"] < store.percentiles["p99"]


def test_chunk_files_read_what_zarr_writes_and_write_what_zarr_reads(tmp_path):
    """The store's hot paths read and write its chunk files directly; zarr must agree with them both ways."""
    import zarr

    shape = (1300, 1100)  # partial chunks at the far edges
    image = np.random.default_rng(3).integers(0, 65535, shape, dtype=np.uint16)
    image[:600, :600] = 0  # an empty chunk, which zarr does not write
    by_zarr = tmp_path / "by_zarr.zarr"
    create_store(by_zarr, shape)
    zarr.open_array(str(by_zarr), mode="r+")[:] = image
    assert not (by_zarr / "c" / "0" / "0").exists() and (by_zarr / "c" / "0" / "1").exists()
    # A store written with zstd, as dapi_zarr did before blosc, still reads.
    by_zstd = tmp_path / "by_zstd.zarr"
    zarr.create_array(
        store=str(by_zstd), shape=shape, chunks=(512, 512), dtype="uint16", compressors=zarr.codecs.ZstdCodec(level=1)
    )[:] = image
    windows = (Window(0, 0, *shape), Window(-48, -48, 600, 700), Window(1200, 1000, 200, 200), Window(2000, 0, 5, 5))
    for files in (ChunkFiles.open(by_zarr), ChunkFiles.open(by_zstd)):
        for win in windows:
            np.testing.assert_array_equal(files.read(win), read_window(image, win))
    by_files = tmp_path / "by_files.zarr"
    create_store(by_files, shape)
    for block in tile_windows(*shape, 1024):
        ChunkFiles.open(by_files).write_block(block, image[block.slices])
    np.testing.assert_array_equal(zarr.open_array(str(by_files), mode="r")[:], image)
    with pytest.raises(ValueError, match="does not start on a 512-px chunk corner"):
        ChunkFiles.open(by_files).write_block(Window(100, 0, 10, 10), image[:10, :10])
    (by_files / "c" / "1" / "1").write_bytes(b"cut short")
    with pytest.raises(ValueError, match=f"{by_files / 'c' / '1' / '1'}: not a readable chunk"):
        ChunkFiles.open(by_files).read(Window(500, 500, 100, 100))
    other = tmp_path / "other.zarr"
    zarr.create_array(store=str(other), shape=shape, chunks=(256, 256), dtype="uint16")
    gzip = tmp_path / "gzip.zarr"
    zarr.create_array(
        store=str(gzip), shape=shape, chunks=(512, 512), dtype="uint16", compressors=zarr.codecs.GzipCodec()
    )
    for path in (other, gzip):
        with pytest.raises(ValueError, match=f"{path}: not a DAPI store as dapi_zarr writes it"):
            ChunkFiles.open(path)
