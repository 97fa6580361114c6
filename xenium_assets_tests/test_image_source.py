"""DAPI images from outside the pipeline (images/source.py): opened from real TIFFs, written as DAPI stores."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

from xenium_assets.images.source import ImageError, intensity_warning, open_image, write_image_store

SHAPE = (300, 400)


def _image(seed: int = 0, channels: int = 3, dtype: str = "uint16") -> np.ndarray:
    top = 4000 if dtype == "uint16" else 250
    return np.random.default_rng(seed).integers(0, top, (channels, *SHAPE), dtype=dtype)


def _ome(path: Path, data: np.ndarray, names: list[str], size: float | None = 0.5, unit: str = "µm", **kw) -> Path:
    """An OME-TIFF of ``data`` (C, Y, X), one tiled page a channel, as tifffile writes it."""
    meta: dict = {"axes": "CYX", "Channel": {"Name": names}}
    if size is not None:
        meta |= {"PhysicalSizeX": size, "PhysicalSizeXUnit": unit, "PhysicalSizeY": size, "PhysicalSizeYUnit": unit}
    tifffile.imwrite(path, data, metadata=meta, tile=(128, 128), compression="zlib", **kw)
    return path


def _error(path: Path, problem: str, fix: str) -> str:
    """The one line an ImageError says, as a regex."""
    return f"^{re.escape(f'{path}: {problem}; {fix}')}$"


def _store_pixels(store) -> np.ndarray:
    return np.asarray(store.dapi.open()[:])


def test_an_ome_tiff_gives_its_dapi_channel_by_name_and_its_pixel_size(tmp_path):
    data = _image()
    path = _ome(tmp_path / "three.ome.tif", data, ["Membrane", "DAPI", "18S"])
    source = open_image(path)
    assert (source.channel_index, source.channel_name, source.channels) == (1, "DAPI", ["Membrane", "DAPI", "18S"])
    assert (source.pixel_size_um, source.pixel_size_source, source.levels) == (0.5, "ome", [SHAPE])
    store = write_image_store(source, tmp_path / "out", 0.5)
    assert not store.blank and not store.dapi.resampled and store.dapi.source_pixel_size_um == 0.5
    np.testing.assert_array_equal(_store_pixels(store), data[1])
    assert store.dapi.percentiles["p1"] < store.dapi.percentiles["p50"] < store.dapi.percentiles["p99.9"]
    # At another pixel size the store is resampled to it, as dapi_zarr resamples a bundle's.
    finer = write_image_store(source, tmp_path / "finer", 0.25)
    assert finer.dapi.shape == (600, 800) and finer.dapi.resampled and finer.dapi.source_shape == SHAPE


def test_a_plain_tiff_needs_a_pixel_size_and_a_bad_one_is_one_clear_line(tmp_path):
    image = _image(channels=1)[0]
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, image)
    with pytest.raises(ImageError, match=_error(path, "no pixel size in its metadata", "pass --pixel-size UM")):
        open_image(path)
    source = open_image(path, pixel_size_um=0.2125)
    assert (source.pixel_size_um, source.pixel_size_source, source.channel_index) == (0.2125, "argument", 0)
    np.testing.assert_array_equal(_store_pixels(write_image_store(source, tmp_path / "out", 0.2125)), image)
    for bad in (0, -0.5, float("nan"), float("inf")):
        with pytest.raises(ImageError, match=f"^{re.escape(str(path))}: pixel size .* is not a positive number of µm"):
            open_image(path, pixel_size_um=bad)
    with pytest.raises(ImageError, match=f"^{re.escape(str(path))}: pixel size 'wide' is not a number"):
        open_image(path, pixel_size_um="wide")  # type: ignore[arg-type]
    # The argument wins over the metadata, with a note when they disagree.
    ome = _ome(tmp_path / "sized.ome.tif", _image(channels=1), ["DAPI"], size=0.5)
    overridden = open_image(ome, pixel_size_um=0.25)
    assert overridden.pixel_size_um == 0.25 and "says 0.5" in overridden.notes[0]


def test_a_multichannel_image_without_dapi_needs_a_channel_by_name_or_index(tmp_path):
    data = _image()
    path = _ome(tmp_path / "abc.ome.tif", data, ["A", "B", "C"])
    fix = "pass --channel NAME or INDEX"
    with pytest.raises(ImageError, match=_error(path, "3 channels (A, B, C), none called DAPI", fix)):
        open_image(path)
    for channel in (1, "B", "b", "1"):
        source = open_image(path, channel=channel)
        assert (source.channel_index, source.channel_name) == (1, "B")
    np.testing.assert_array_equal(_store_pixels(write_image_store(source, tmp_path / "out", 0.5)), data[1])
    with pytest.raises(
        ImageError,
        match=_error(path, "channel 3 out of range: 3 channels (A, B, C)", "pass --channel 0 to 2 or a name"),
    ):
        open_image(path, channel=3)
    with pytest.raises(ImageError, match=_error(path, "no channel named 'D' (3 channels: A, B, C)", fix)):
        open_image(path, channel="D")
    # Pages without names (a multi-page TIFF) are told apart by index.
    pages = tmp_path / "pages.tif"
    tifffile.imwrite(pages, data, photometric="minisblack")
    with pytest.raises(ImageError, match=_error(pages, "3 channels (#0, #1, #2), none called DAPI", fix)):
        open_image(pages, pixel_size_um=0.5)
    source = open_image(pages, pixel_size_um=0.5, channel=2)
    np.testing.assert_array_equal(_store_pixels(write_image_store(source, tmp_path / "pages", 0.5)), data[2])
    # A label with DAPI as a word is found; an ImageJ hyperstack names its channels and calibrates its pixels.
    labelled = tmp_path / "imagej.tif"
    tifffile.imwrite(
        labelled,
        data,
        imagej=True,
        resolution=(4.0, 4.0),
        metadata={"axes": "CYX", "unit": "um", "Labels": ["x", "DAPI 405", "y"]},
    )
    source = open_image(labelled)
    assert (source.channel_index, source.pixel_size_um, source.pixel_size_source) == (1, 0.25, "imagej")
    assert "DAPI 405 taken as DAPI" in source.notes[0]


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_uint8_and_uint16_images_are_stored_as_they_are(tmp_path, dtype):
    data = _image(dtype=dtype)
    path = _ome(tmp_path / f"{dtype}.ome.tif", data, ["dapi", "x", "y"])
    source = open_image(path)
    assert (source.dtype, source.channel_index) == (dtype, 0)
    store = write_image_store(source, tmp_path / "out", 0.5)
    np.testing.assert_array_equal(_store_pixels(store), data[0].astype(np.uint16))
    assert store.dapi.percentiles["p99.9"] <= np.iinfo(dtype).max


def test_a_pyramid_ome_tiff_with_its_pixel_size_in_nm(tmp_path):
    """SubIFD levels are described; the plane read and resampled is the channel's own page, the second of three."""
    data = _image(seed=1)
    path = tmp_path / "pyramid.ome.tif"
    meta = {"axes": "CYX", "Channel": {"Name": ["A", "Dapi", "C"]}, "PhysicalSizeX": 500, "PhysicalSizeXUnit": "nm"}
    with tifffile.TiffWriter(path) as tif:
        tif.write(data, subifds=2, tile=(128, 128), compression="zlib", metadata=meta)
        for step in (2, 4):
            tif.write(data[:, ::step, ::step], subfiletype=1, tile=(128, 128), compression="zlib")
    source = open_image(path)
    assert (source.channel_index, source.ifd, source.pixel_size_um) == (1, 1, 0.5)
    assert source.levels == [SHAPE, (150, 200), (75, 100)]
    np.testing.assert_array_equal(_store_pixels(write_image_store(source, tmp_path / "same", 0.5)), data[1])
    # At 1 µm each output pixel centre falls between four source pixels: bilinear is their mean.
    coarse = _store_pixels(write_image_store(source, tmp_path / "coarse", 1.0))
    mean = data[1].reshape(150, 2, 200, 2).astype(np.float64).mean(axis=(1, 3))
    np.testing.assert_allclose(coarse, mean, atol=0.51)


def test_a_xenium_bundle_gives_its_morphology_dapi_at_the_bundle_pixel_size(bundles, tmp_path):
    from xenium_assets.bundle.image import find_dapi
    from xenium_assets.bundle.locate import focus_image

    bundle = bundles("3", n_cells=40, width=512, height=384, codec="zlib", tile=256)
    source = open_image(bundle)
    dapi = find_dapi(focus_image(bundle)[0])
    assert (source.file, source.ifd, source.channel_name) == (dapi.file, dapi.ifd, "DAPI")
    assert (source.pixel_size_um, source.pixel_size_source, source.shape) == (0.2125, "experiment.xenium", (384, 512))
    store = write_image_store(source, tmp_path / "out", 0.2125)
    np.testing.assert_array_equal(_store_pixels(store), tifffile.imread(dapi.file, is_ome=False))
    # The first focus file alone is a multi-file OME-TIFF: its channels are found through the OME-XML.
    first = open_image(dapi.file)
    assert (first.file, first.channel_name, first.pixel_size_source) == (dapi.file, "DAPI", "ome")
    other = open_image(dapi.file, channel="18S")
    assert other.file != dapi.file and other.channel_name == "18S"
    with pytest.raises(
        ImageError,
        match=_error(
            bundle, "a bundle's DAPI is found by its channel name", "drop --channel, or pass the image file itself"
        ),
    ):
        open_image(bundle, channel=1)


@pytest.mark.parametrize("value", [0, 1234])
def test_a_blank_image_is_reported_blank_not_an_error(tmp_path, value):
    path = tmp_path / "blank.tif"
    tifffile.imwrite(path, np.full(SHAPE, value, dtype=np.uint16))
    store = write_image_store(open_image(path, pixel_size_um=0.5), tmp_path / "out", 0.5)
    assert store.blank and store.notes == [f"{path}: blank (every pixel is {value}); nothing to classify"]
    # A few bright pixels are not blank, but leave nothing between the percentiles normalisation uses.
    sparse = np.full(SHAPE, value, dtype=np.uint16)
    sparse[1::97, 1::89] = 60000  # off the 1-in-16 sample's grid: only reading every pixel finds them
    tifffile.imwrite(path, sparse)
    store = write_image_store(open_image(path, pixel_size_um=0.5), tmp_path / "sparse", 0.5)
    assert not store.blank and "no contrast between its p1 and p99.9" in store.notes[0]


def test_intensities_far_outside_the_training_range_are_a_warning():
    training = [{"p1": 100.0, "p99.9": 2100.0}, (150.0, 3150.0)]  # spans 2000 and 3000
    assert intensity_warning({"p1": 400.0, "p99.9": 5000.0}, training) is None
    assert intensity_warning({"p1": 10.0, "p99.9": 510.0}, training) is None  # 2000 / 500: exactly 4x
    narrow = intensity_warning({"p1": 10.0, "p99.9": 250.0}, training)
    assert narrow and narrow.startswith("intensities far outside the training range") and "2000-3000" in narrow
    assert intensity_warning({"p1": 0.0, "p99.9": 60000.0}, {"p1": 100.0, "p99.9": 2100.0})
    assert "no range" in intensity_warning({"p1": 7.0, "p99.9": 7.0}, training)
    with pytest.raises(ValueError, match="positive p99.9 - p1 span"):
        intensity_warning({"p1": 0.0, "p99.9": 1.0}, {"p1": 5.0, "p99.9": 5.0})


def test_unusable_images_are_one_line_naming_the_file_and_the_fix(tmp_path):
    garbage = tmp_path / "cut.tif"
    garbage.write_bytes(b"II*\x00 not really a tiff")
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((*SHAPE, 3), dtype=np.uint8))
    floats = tmp_path / "float.tif"
    tifffile.imwrite(floats, np.zeros(SHAPE, dtype=np.float32))
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((2, 3, *SHAPE), dtype=np.uint16), imagej=True, metadata={"axes": "ZCYX"})
    skewed = tmp_path / "skewed.ome.tif"
    meta = {"axes": "YX", "Channel": {"Name": ["DAPI"]}, "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.7}
    tifffile.imwrite(skewed, np.zeros(SHAPE, dtype=np.uint16), metadata=meta)
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        garbage: "not a readable TIFF",
        tmp_path / "absent.tif": "no such file",
        rgb: "channel #0 has 3 samples a pixel",
        floats: "pixels are float32, not uint8 or uint16; convert the image",
        stack: "a stack (Z=2",
        skewed: "its pixels are not square (0.5 x 0.7 µm); resample it to square pixels",
        empty: "a folder but not a Xenium bundle",
    }
    for path, problem in cases.items():
        with pytest.raises(ImageError) as caught:
            open_image(path, pixel_size_um=None if path is skewed else 0.5)
        message = str(caught.value)
        assert message.startswith(f"{path}: {problem}") and "\n" not in message and caught.value.fix, message
