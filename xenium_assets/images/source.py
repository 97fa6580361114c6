"""Open a DAPI image from outside the Xenium pipeline, and write it as a DAPI store at the model's pixel size.

A model trained on Xenium DAPI is applied to images of any origin: an OME-TIFF (pyramid or not), a plain TIFF, or
the morphology image of a Xenium bundle. What the rest of the pipeline needs of such an image is what it needs of
a bundle's: one 2D plane of a TIFF (a file and its IFD), its shape, its pixel size and its origin
(``grid.DapiPlane``), so the transcode of ``dapi_zarr`` (``dapi_store.transcode_dapi``: out of core, block by
block, resampled to the target pixel size, with intensity percentiles) writes it unchanged.

The DAPI channel is found by its name in the OME-XML (or an ImageJ label), never by position unless the user
names the index; the pixel size comes from the caller, else the metadata, never from a guess. Anything that
cannot be used raises ``ImageError``: one line, naming the file and the fix. A blank image is not an error: its
store is written and flagged, so a run over many images loses none of the others.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from xenium_assets.bundle.errors import BundleError
from xenium_assets.bundle.image import find_dapi, open_plane, plane_pages
from xenium_assets.bundle.locate import focus_image, read_experiment
from xenium_assets.formats import DAPI, XeniumFile
from xenium_assets.parallel import Runner, thread_runner
from xenium_assets.patches.dapi_store import BLOCK, ChunkFiles, DapiStore, transcode_dapi
from xenium_assets.patches.grid import RESAMPLE_TOLERANCE, DapiPlane
from xenium_assets.raster import tile_windows

DTYPES = ("uint8", "uint16")
"""Pixel types read: what microscopes write for DAPI, and what the uint16 store holds without loss."""
PIXEL_SIZE_FIX = "pass --pixel-size UM"
CHANNEL_FIX = "pass --channel NAME or INDEX"
PLANE_FIX = "pass one 2D plane (a maximum projection or a single focal plane)"
LOW, HIGH = "p1", "p99.9"
"""The percentiles each image is normalised between, per image, as in training (``training.data.LOW, HIGH``,
not imported: that module loads torch)."""
INTENSITY_FACTOR = 4.0
"""An image whose p1..p99.9 span is more than this many times wider, or narrower, than every training sample's is
flagged. Normalisation is per image, so a plain gain or offset does not matter; a span this far off means another
bit depth, exposure or stain than the model saw (the training samples' own spans differ by well under 4x)."""
_UM_PER_UNIT = {
    "m": 1e6,
    "dm": 1e5,
    "cm": 1e4,
    "mm": 1e3,
    "µm": 1.0,
    "nm": 1e-3,
    "pm": 1e-6,
    "Å": 1e-4,
    "in": 25_400.0,
    "thou": 25.4,
    "pt": 25_400.0 / 72,
}
"""OME ``UnitsLength`` values (and ImageJ's spellings of the micrometre, below) in µm."""
_SOURCES = {"ome": "OME-XML", "imagej": "ImageJ calibration", "experiment.xenium": "experiment.xenium"}
_MICRON = {"um", "micron", "microns", "micrometer", "micrometre", "µm", "μm", "\\u00b5m"}


class ImageError(ValueError):
    """An image that cannot be used. ``str()`` is one line: the file, what is wrong, and the fix."""

    def __init__(self, path: str | Path, problem: str, fix: str | None = None) -> None:
        self.path, self.problem, self.fix = Path(path), problem, fix
        super().__init__(f"{path}: {problem}" + (f"; {fix}" if fix else ""))


@dataclass(frozen=True)
class ImageSource:
    """A DAPI plane of an image, opened and checked: where it lives, its pyramid, pixel type and pixel size."""

    path: Path
    """What was opened: a TIFF, or a Xenium bundle folder."""
    file: Path
    """The TIFF holding the DAPI plane (another file of a multi-file OME set, or the bundle's focus image)."""
    ifd: int
    channel_index: int
    channel_name: str
    channels: list[str]
    levels: list[tuple[int, int]]
    dtype: str
    pixel_size_um: float
    pixel_size_source: str
    """'argument', 'ome', 'imagej' or 'experiment.xenium'."""
    image_origin_um: tuple[float, float] = (0.0, 0.0)
    notes: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        return self.levels[0]

    @property
    def plane(self) -> DapiPlane:
        """What the target grid and the DAPI transcode read (as of a bundle's manifest)."""
        return DapiPlane(self.file, self.ifd, self.shape, self.pixel_size_um, self.image_origin_um)


@dataclass(frozen=True)
class ImageStore:
    """An image written as a DAPI store at the model's pixel size; ``blank`` when it has nothing to classify."""

    source: ImageSource
    dapi: DapiStore
    blank: bool
    notes: list[str]


@dataclass(frozen=True)
class _Layout:
    """The channels of a TIFF as its metadata gives them: names, the (file, IFD) of each, and the pixel size."""

    names: list[str]
    planes: list[tuple[Path, int]]
    pixel_size_um: float | None
    pixel_size_source: str
    problem: tuple[str, str] | None
    """(what is wrong, the fix) when the metadata names a pixel size that cannot be used."""
    notes: list[str]


def open_image(
    path: str | Path, *, pixel_size_um: float | None = None, channel: str | int | None = None
) -> ImageSource:
    """The DAPI plane of a TIFF or OME-TIFF, or of a Xenium bundle folder; raise ImageError if it cannot be used.

    ``pixel_size_um`` wins over the metadata (OME PhysicalSizeX in any length unit, an ImageJ calibration, or a
    bundle's experiment.xenium); ``channel`` picks the plane by name (case-insensitive) or index where no channel
    is called DAPI."""
    path = Path(path)
    explicit = None if pixel_size_um is None else _positive_size(path, pixel_size_um)
    if path.is_dir():
        return _open_bundle(path, explicit, channel)
    if not path.exists():
        raise ImageError(path, "no such file", "pass a TIFF or OME-TIFF image, or a Xenium bundle folder")
    try:
        with tifffile.TiffFile(path, is_ome=False) as tif:
            if not len(tif.pages):
                raise ValueError("no image in it")
            layout = _ome_layout(path, tif) or _tiff_layout(path, tif)
    except ImageError:
        raise
    except Exception as exc:
        fix = "pass a TIFF or OME-TIFF image, or a Xenium bundle folder"
        raise ImageError(path, f"not a readable TIFF ({_one_line(exc)})", fix) from exc
    index, chosen = _choose_channel(path, layout.names, channel)
    size, source, sized = _resolve_size(path, explicit, layout.pixel_size_um, layout.pixel_size_source, layout.problem)
    file, ifd = layout.planes[index]
    levels, dtype = _check_plane(path, file, ifd, _label(layout.names, index))
    return ImageSource(
        path=path,
        file=file,
        ifd=ifd,
        channel_index=index,
        channel_name=layout.names[index] or DAPI,
        channels=layout.names,
        levels=levels,
        dtype=dtype,
        pixel_size_um=size,
        pixel_size_source=source,
        notes=[*layout.notes, *chosen, *sized],
    )


def write_image_store(
    source: ImageSource, out_dir: str | Path, pixel_size_um: float, run: Runner | None = None
) -> ImageStore:
    """Write the image as ``dapi_zarr`` writes a bundle's DAPI (store and description in ``out_dir``) at
    ``pixel_size_um``, out of core; flag it blank, with a note, when it has no contrast at all."""
    dapi = transcode_dapi(source.plane, Path(out_dir), pixel_size_um, run or thread_runner())
    notes = list(source.notes)
    blank = 0 in dapi.shape
    if blank:
        notes.append(f"{source.path}: empty ({dapi.shape[0]} x {dapi.shape[1]} px); nothing to classify")
    elif dapi.percentiles["p0.5"] == dapi.percentiles["p99.9"]:
        # The percentiles come from a 1-in-16 sample: only every pixel tells a blank image from a sparse one.
        low, high = _value_range(dapi)
        blank = low == high
        if blank:
            notes.append(f"{source.path}: blank (every pixel is {low}); nothing to classify")
    if not blank and dapi.percentiles[LOW] == dapi.percentiles[HIGH]:
        notes.append(
            f"{source.path}: no contrast between its {LOW} and {HIGH} intensity percentiles (both "
            f"{dapi.percentiles[LOW]:g}); per-image normalisation as in training cannot tell nuclei from background"
        )
    return ImageStore(source=source, dapi=dapi, blank=blank, notes=notes)


def intensity_warning(
    image: Mapping[str, float],
    training: Mapping[str, float] | Iterable[Mapping[str, float] | tuple[float, float]],
    factor: float = INTENSITY_FACTOR,
) -> str | None:
    """A warning for the prediction's metadata when the image's p1..p99.9 span is more than ``factor`` times
    wider or narrower than the training samples' (``training``: one percentile dict, as ``DapiStore.percentiles``,
    or one per training sample, dicts or (low, high) pairs); None when it is within that range."""
    samples = [training] if isinstance(training, Mapping) else list(training)
    ranges = [(s[LOW], s[HIGH]) if isinstance(s, Mapping) else tuple(s) for s in samples]
    spans = [float(high) - float(low) for low, high in ranges]
    if not spans or min(spans) <= 0:
        raise ValueError(f"training percentiles need a positive {HIGH} - {LOW} span in every sample (got {spans})")
    span = float(image[HIGH]) - float(image[LOW])
    narrowest, widest = min(spans), max(spans)
    trained = f"{narrowest:g}" if narrowest == widest else f"{narrowest:g}-{widest:g}"
    if span <= 0:
        return f"intensities have no range ({LOW} = {HIGH} = {image[LOW]:g}; training spans {trained})"
    if span > widest * factor or span < narrowest / factor:
        return (
            f"intensities far outside the training range: {LOW}-{HIGH} {image[LOW]:g}-{image[HIGH]:g} (span {span:g}) "
            f"against training spans of {trained}, more than {factor:g}x off; normalised per image as in training, "
            "but the model never saw an image like it"
        )
    return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= 200 else text[:197] + "..."


def _positive_size(path: Path, value: object) -> float:
    """``value`` as a pixel size in µm, or ImageError."""
    try:
        size = float(value) if not isinstance(value, bool) else math.nan  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ImageError(path, f"pixel size {value!r} is not a number", f"{PIXEL_SIZE_FIX} (µm per pixel)") from None
    if not math.isfinite(size) or size <= 0:
        raise ImageError(
            path, f"pixel size {value!r} is not a positive number of µm", f"{PIXEL_SIZE_FIX} (µm per pixel)"
        )
    return size


def _resolve_size(
    path: Path, explicit: float | None, found: float | None, source: str, problem: tuple[str, str] | None
) -> tuple[float, str, list[str]]:
    """(µm per pixel, where it came from, notes): the caller's, else the metadata's, else ImageError."""
    if explicit is not None:
        if found is None or abs(found - explicit) <= RESAMPLE_TOLERANCE * explicit:
            return explicit, "argument", []
        said = f"its {_SOURCES.get(source, source)} says {found:g}"
        return explicit, "argument", [f"{path}: pixel size {explicit:g} µm given; {said}"]
    if found is not None:
        return found, source, []
    raise ImageError(path, *(problem or ("no pixel size in its metadata", PIXEL_SIZE_FIX)))


def _unit_um(unit: object) -> float | None:
    """µm per ``unit`` (an OME UnitsLength or an ImageJ unit string); None for a unit that is not a length."""
    text = str(getattr(unit, "value", unit) or "").strip()
    if text.lower() in _MICRON or text in _MICRON:
        return 1.0
    return _UM_PER_UNIT.get(text)


def _ome_layout(path: Path, tif: tifffile.TiffFile) -> _Layout | None:
    """Channels, their (file, IFD) through TiffData, and PhysicalSizeX in µm, from the first page's OME-XML."""
    xml = tif.pages[0].description
    if "<OME" not in xml:
        return None
    from ome_types import from_xml

    try:
        ome = from_xml(xml, validate=False)
    except Exception as exc:
        raise ImageError(
            path, f"unparseable OME-XML ({_one_line(exc)})", "re-export the image with valid OME metadata"
        ) from exc
    if not ome.images:
        return None
    notes = [f"{path}: {len(ome.images)} images in its OME-XML; the first is read"] if len(ome.images) > 1 else []
    pixels = ome.images[0].pixels
    if pixels.size_z * pixels.size_t > 1:
        raise ImageError(path, f"a stack of {pixels.size_z} z-planes and {pixels.size_t} time points", PLANE_FIX)
    names = [c.name or "" for c in pixels.channels] or [""] * max(pixels.size_c, 1)
    blocks = pixels.tiff_data_blocks
    planes = []
    for c in range(len(names)):
        file, ifd = path, c  # one IFD per channel, in order, when no TiffData says otherwise
        for td in blocks:
            first = td.first_c or 0
            count = td.plane_count if td.plane_count is not None else (1 if len(blocks) > 1 else len(names))
            if first <= c < first + count:
                named = td.uuid.file_name if td.uuid is not None else None
                file, ifd = (path.parent / named if named else path), (td.ifd or 0) + c - first
                break
        planes.append((file, ifd))
    size, problem = None, None
    if pixels.physical_size_x is not None:
        unit = pixels.physical_size_x_unit
        per = _unit_um(unit)
        x = float(pixels.physical_size_x) * per if per is not None else math.nan
        y_per = _unit_um(pixels.physical_size_y_unit)
        y = float(pixels.physical_size_y) * y_per if pixels.physical_size_y is not None and y_per else x
        if per is None:
            problem = (f"its PhysicalSizeX is in {getattr(unit, 'value', unit)!r}, not a length", PIXEL_SIZE_FIX)
        elif not math.isfinite(x) or x <= 0:
            problem = (f"its PhysicalSizeX {pixels.physical_size_x!r} is not a positive size", PIXEL_SIZE_FIX)
        elif abs(y - x) > RESAMPLE_TOLERANCE * x:
            problem = (f"its pixels are not square ({x:g} x {y:g} µm)", "resample it to square pixels")
        else:
            size = x
    return _Layout(names, planes, size, "ome", problem, notes)


def _tiff_layout(path: Path, tif: tifffile.TiffFile) -> _Layout:
    """The pages of the first series as channels (named by ImageJ labels if any); an ImageJ calibration in µm."""
    series = tif.series[0]
    stacked = [f"{a}={n}" for a, n in zip(series.axes, series.shape, strict=True) if a in "ZT" and n > 1]
    if stacked:
        raise ImageError(path, f"a stack ({', '.join(stacked)}; axes {series.axes})", PLANE_FIX)
    pages = list(series.pages)
    if not pages or any(p is None for p in pages):
        raise ImageError(path, f"its series {series.axes} {series.shape} has missing pages", "re-save the image")
    names = [""] * len(pages)
    imagej = tif.imagej_metadata or {}
    labels = imagej.get("Labels")
    if isinstance(labels, list) and len(labels) == len(pages):
        names = [str(label) for label in labels]
    size = None
    resolution = tif.pages[0].tags.get("XResolution")
    per = _unit_um(imagej.get("unit")) if imagej else None
    if per is not None and resolution is not None:
        pixels, length = resolution.value  # pixels per `length` units
        if pixels > 0 and length > 0:
            size = length / pixels * per
    return _Layout(names, [(path, p.index) for p in pages], size, "imagej", None, [])


def _label(names: list[str], index: int) -> str:
    return names[index] or f"#{index}"


def _choose_channel(path: Path, names: list[str], channel: str | int | None) -> tuple[int, list[str]]:
    """(channel index, notes): the one named DAPI (or holding DAPI as a word), the only one, or the one asked for."""
    listing = ", ".join(_label(names, i) for i in range(len(names)))
    count = f"{len(names)} channel" + ("s" if len(names) != 1 else "")
    if channel is None:
        exact = [i for i, n in enumerate(names) if n.strip().upper() == DAPI]
        word = [i for i, n in enumerate(names) if DAPI in re.split(r"[^A-Z0-9]+", n.upper())]
        if exact or len(word) == 1:
            index = (exact or word)[0]
            note = [] if exact == [index] else [f"{path}: channel {_label(names, index)} taken as DAPI (of {listing})"]
            return index, note
        if len(names) == 1:
            note = [f"{path}: its only channel, {names[0]!r}, is taken as DAPI"] if names[0] else []
            return 0, note
        raise ImageError(path, f"{count} ({listing}), none called DAPI", CHANNEL_FIX)
    if isinstance(channel, str):
        named = [i for i, n in enumerate(names) if n.strip().casefold() == channel.strip().casefold()]
        if named:
            return named[0], []
        if not channel.strip().isdigit():
            raise ImageError(path, f"no channel named {channel!r} ({count}: {listing})", CHANNEL_FIX)
        channel = int(channel)
    if isinstance(channel, bool) or not isinstance(channel, int | np.integer):
        raise ImageError(path, f"channel {channel!r} is neither a name nor an index", CHANNEL_FIX)
    if not 0 <= channel < len(names):
        fix = f"pass --channel {0 if len(names) == 1 else f'0 to {len(names) - 1}'} or a name"
        raise ImageError(path, f"channel {channel} out of range: {count} ({listing})", fix)
    return int(channel), []


def _check_plane(path: Path, file: Path, ifd: int, label: str) -> tuple[list[tuple[int, int]], str]:
    """(pyramid levels, pixel type) of the plane at ``file``/``ifd``; decodes a corner to prove it reads."""
    if not file.exists():
        raise ImageError(
            file, f"missing: the OME-XML of {path.name} puts channel {label} in it", "copy every file of the image"
        )
    try:
        with tifffile.TiffFile(file, is_ome=False) as tif:
            if ifd >= len(tif.pages):
                raise ImageError(
                    file,
                    f"has {len(tif.pages)} pages; its metadata puts channel {label} at IFD {ifd}",
                    "re-export the image",
                )
            pages = plane_pages(tif, ifd)
            page = pages[0]
            if page.ndim != 2:
                raise ImageError(
                    path,
                    f"channel {label} has {page.samplesperpixel} samples a pixel {page.shape} (RGB or interleaved)",
                    "save the DAPI channel as a greyscale image",
                )
            dtype = str(page.dtype)
            if dtype not in DTYPES:
                raise ImageError(
                    path, f"pixels are {dtype}, not uint8 or uint16", "convert the image to 16-bit unsigned integers"
                )
            levels = [(int(p.shape[-2]), int(p.shape[-1])) for p in pages]
        with open_plane(file, ifd) as plane:
            np.asarray(plane[:64, :64])
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(
            file,
            f"cannot read the image ({_one_line(exc)})",
            "check that the file is complete and that imagecodecs is installed",
        ) from exc
    return levels, dtype


def _open_bundle(root: Path, explicit: float | None, channel: str | int | None) -> ImageSource:
    """The DAPI plane of a bundle's morphology image, found by its channel name as the pipeline finds it; the pixel
    size from experiment.xenium, else the image's OME-XML."""
    if channel is not None:
        raise ImageError(
            root, "a bundle's DAPI is found by its channel name", "drop --channel, or pass the image file itself"
        )
    try:
        focus, _ = focus_image(root)
    except BundleError as exc:
        if exc.path != root:
            raise ImageError(exc.path, exc.problem, exc.fix) from exc
        fix = "pass a TIFF or OME-TIFF image, or a Xenium bundle folder"
        raise ImageError(root, f"a folder but not a Xenium bundle ({exc.problem})", fix) from exc
    try:
        dapi = find_dapi(focus)
        experiment = root / XeniumFile.EXPERIMENT
        spec = read_experiment(experiment if experiment.exists() else None)
    except BundleError as exc:
        raise ImageError(exc.path, exc.problem, exc.fix) from exc
    raw = spec.get("pixel_size")
    from_spec = isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw) and raw > 0
    found, source = (float(raw), "experiment.xenium") if from_spec else (dapi.physical_size_um, "ome")
    size, source, sized = _resolve_size(root, explicit, found, source, None)
    if dapi.dtype not in DTYPES:
        raise ImageError(
            dapi.file, f"pixels are {dapi.dtype}, not uint8 or uint16", "convert the image to 16-bit unsigned integers"
        )
    return ImageSource(
        path=root,
        file=dapi.file,
        ifd=dapi.ifd,
        channel_index=dapi.channel_index,
        channel_name=dapi.channel_name,
        channels=dapi.channels,
        levels=[(int(h), int(w)) for h, w in dapi.levels],
        dtype=dapi.dtype,
        pixel_size_um=size,
        pixel_size_source=source,
        notes=[*dapi.notes, *sized],
    )


def _value_range(dapi: DapiStore) -> tuple[int, int]:
    """The exact (min, max) of a store, read block by block."""
    files = ChunkFiles.open(dapi.path)
    extremes = [(int(b.min()), int(b.max())) for b in map(files.read, tile_windows(*dapi.shape, BLOCK))]
    return min(lo for lo, _ in extremes), max(hi for _, hi in extremes)
