"""Write a complete synthetic Xenium bundle for one XOA release, and its ground truth beside it.

The order of work: draw the tissue (positions, classes, nuclei, cells, counts) in memory — a few
arrays per cell; then stream the images tile by tile, writing the label masks and measuring cell and
nucleus areas from the same rasters; then write the tables. The bundle is built in a temporary
sibling folder and renamed into place, so a killed run leaves nothing that looks like a bundle.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from xenium_assets.atomic import atomic_dir, atomic_file, write_json
from xenium_assets.bundle.ids import ids_from_prefix
from xenium_assets.formats import (
    FOCUS_CHANNELS,
    FOCUS_V2_NAME,
    XENIUM_PIXEL_SIZE_UM,
    FeatureType,
    XeniumFile,
    v4_channel_file,
)
from xenium_assets.progress import Progress, no_progress
from xenium_assets.raster import PolygonRaster, Window, tile_windows
from xenium_assets.synth import biology, render, tables
from xenium_assets.synth.cells_zarr import CellsZarrWriter
from xenium_assets.synth.ome_tiff import CODECS, ChannelFile, channel_files, ome_xml, write_pyramid
from xenium_assets.synth.profiles import PROFILES, XoaProfile
from xenium_assets.synth.shapes import Outlines, build_outlines, polygons_from_rings, touching

T = TypeVar("T")
R = TypeVar("R")

EDGE_MARGIN_UM = 8.0
LOW_COUNT_FRACTION = 0.02
HIGH_CONTROL_FRACTION = 0.01
LOW_QV_FRACTION = 0.25
UNASSIGNED_FRACTION = 0.03
TRANSCRIPT_CHUNK_CELLS = 20_000
FOV_PX = 4096
REGION_PURITY = 0.8
"""Share of cells that take their region's class; the rest are mixed in at random."""
CROWDED_SHARE = 0.5
"""``xenium-assets synth --crowded``'s share of the cells in crowded regions."""
TOUCH_PX = 1.0
"""The truth's ``touching``: a nucleus polygon within this many pixels of another cell's nucleus."""


@dataclass(frozen=True)
class SynthParams:
    """What ``xenium-assets synth`` takes; everything is reproducible from these."""

    n_cells: int = 1500
    width: int = 2048
    height: int = 2048
    version: str = "3"
    seed: int = 0
    null: bool = False
    null_regions: bool = False
    """Morphology follows a random region map of its own, independent of the class: a spatially clumped
    negative control (``null`` draws it cell by cell, so neighbours do not look alike)."""
    n_classes: int = 4
    codec: str = "jpeg2000"
    csv: bool = False
    tile: int = 1024
    pixel_size: float = XENIUM_PIXEL_SIZE_UM
    region_name: str | None = None
    workers: int = 0
    expression_shift: float = 0.0
    """A batch effect of this sample's own: SD of the log factor on each non-marker gene's baseline (and half of
    it on the depth); see ``biology.shift_panel``. 0: none."""
    crowding: float = 0.0
    """Share of the cells packed into crowded regions, where nuclei touch as in dense epithelium or lymphoid
    tissue (``biology.place_crowded_cells``). 0: none, and the bundle is what the same seed always made."""

    def __post_init__(self) -> None:
        if self.version not in PROFILES:
            raise ValueError(f"unknown XOA version {self.version!r}: choose one of {', '.join(PROFILES)}")
        if self.codec not in CODECS:
            raise ValueError(f"unknown codec {self.codec!r}: choose one of {', '.join(CODECS)}")
        if not 2 <= self.n_classes <= len(biology.CLASSES):
            raise ValueError(f"n_classes must be between 2 and {len(biology.CLASSES)}")
        if self.tile % 16:
            raise ValueError("tile must be a multiple of 16 (TIFF)")
        if self.expression_shift < 0:
            raise ValueError("expression_shift must be 0 (none) or positive")
        if self.null and self.null_regions:
            raise ValueError("null and null_regions are two different negative controls: choose one")
        if not 0 <= self.crowding <= 1:
            raise ValueError(f"crowding is a share of the cells, from 0 to 1, not {self.crowding}")


@dataclass(frozen=True)
class SynthResult:
    bundle: Path
    truth: Path
    n_cells: int
    n_nuclei: int
    n_transcripts: int


def truth_paths(bundle: Path) -> tuple[Path, Path]:
    """Ground truth lives beside the bundle (never inside it): <bundle>.truth.parquet / .json."""
    return bundle.with_name(bundle.name + ".truth.parquet"), bundle.with_name(bundle.name + ".truth.json")


def truth_labels(bundle: Path, sample: str) -> pd.DataFrame:
    """The ground-truth classes as a labels table (cell_labels' columns): for tests and benchmarks of later
    stages that need no clustering."""
    truth = pq.read_table(truth_paths(bundle)[0], columns=["cell_id", "label"]).to_pandas()
    return pd.DataFrame(
        {
            "sample": sample,
            "cell_id": truth["cell_id"],
            "label": truth["label"],
            "confidence": 1.0,
            "excluded_reason": "",
            "label_version": "truth-1",
        }
    )


def _ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """Map in a thread pool, yielding results in input order with a bounded number in flight."""
    it = iter(items)
    with ThreadPoolExecutor(workers) as pool:
        pending = deque(pool.submit(fn, x) for x in islice(it, 2 * workers))
        while pending:
            result = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(fn, nxt))
            yield result


class _LabelStats:
    """Pixel count and coordinate sums per label, accumulated tile by tile (areas and centroids)."""

    def __init__(self, n_labels: int) -> None:
        self.n = n_labels + 1
        self.count = np.zeros(self.n)
        self.sum_x = np.zeros(self.n)
        self.sum_y = np.zeros(self.n)

    def add(self, win: Window, labels: np.ndarray) -> None:
        flat = labels.ravel()
        self.count += np.bincount(flat, minlength=self.n)
        self.sum_x += np.bincount(flat, weights=np.tile(np.arange(win.w) + win.x0 + 0.5, win.h), minlength=self.n)
        self.sum_y += np.bincount(flat, weights=np.repeat(np.arange(win.h) + win.y0 + 0.5, win.w), minlength=self.n)


def _cell_ids(n: int, profile: XoaProfile, rng: np.random.Generator) -> np.ndarray:
    """Sorted ids: 1..N for XOA 1.0, else sparse random 'aaaabbbb-1' strings (sorted like real files)."""
    if not profile.string_ids:
        return np.arange(1, n + 1)
    pool = np.unique(rng.integers(1, 2**32, size=int(n * 1.05) + 16, dtype=np.uint64))
    prefix = np.sort(rng.choice(pool, size=n, replace=False)).astype(np.uint32)
    return ids_from_prefix(prefix)


def _image_files(profile: XoaProfile, seed: int) -> tuple[str, list[ChannelFile]]:
    """(folder relative to the bundle, channel files) of the focus image set."""
    if profile.image_layout == "v1":
        return ".", channel_files(["DAPI"], [XeniumFile.MORPHOLOGY_FOCUS_V1.value], seed)
    names = list(FOCUS_CHANNELS)
    if profile.image_layout == "v2":
        filenames = [FOCUS_V2_NAME.format(i) for i in range(len(names))]
    else:
        filenames = [v4_channel_file(i, n) for i, n in enumerate(names)]
    return XeniumFile.MORPHOLOGY_FOCUS_DIR.value, channel_files(names, filenames, seed)


def _counts(
    panel: biology.Panel, features: tables.Features, cls: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(cells x features counts, QC flag per cell): a few cells are low-count or control-heavy."""
    genes = biology.draw_counts(panel, cls, rng)
    n = len(cls)
    flag = np.full(n, "", dtype=object)
    u = rng.random(n)
    low = u < LOW_COUNT_FRACTION
    high = u > 1 - HIGH_CONTROL_FRACTION
    genes[low] = rng.binomial(genes[low], 0.08)
    flag[low], flag[high] = "low_counts", "high_controls"
    n_controls = len(features) - genes.shape[1]
    control_rate = np.where(high, 1.5, 0.01)[:, None]
    controls = rng.poisson(control_rate, size=(n, n_controls)).astype(np.int32)
    return np.hstack([genes, controls]), flag


def _staining(pop: biology.Population, outlines: Outlines, n_classes: int) -> render.Staining:
    """Per-label lookup tables for the renderers (index 0 = background)."""
    owner = outlines.nucleus_cell
    protein_classes = [i for i, c in enumerate(biology.CLASSES[:n_classes]) if c.name in ("fibroblast", "endothelial")]

    def by_nucleus(values: np.ndarray) -> np.ndarray:
        return np.concatenate([[0.0], values[owner]]).astype(np.float32)

    return render.Staining(
        brightness=by_nucleus(pop.brightness),
        texture_fine=by_nucleus(pop.texture_fine),
        texture_coarse=by_nucleus(pop.texture_coarse),
        protein=np.concatenate([[0.0], np.isin(pop.cls, protein_classes)]).astype(np.float32),
    )


def _write_images(
    root: Path,
    params: SynthParams,
    profile: XoaProfile,
    nuclei: PolygonRaster,
    cells: PolygonRaster,
    staining: render.Staining,
    zarr_writer: CellsZarrWriter,
    nucleus_stats: _LabelStats,
    cell_stats: _LabelStats,
    workers: int,
    progress: Progress,
) -> str:
    """Focus image set (and the v1 MIP); masks and area statistics come from the DAPI pass."""
    folder, files = _image_files(profile, params.seed)
    (root / folder).mkdir(exist_ok=True)
    channel_id = "Channel:{}" if profile.image_layout == "v4" else "Channel:0:{}"
    windows = tile_windows(params.height, params.width, params.tile)
    n_files = len(files) + (1 if profile.image_layout == "v1" else 0)

    def dapi_tiles(noise_seed: int, record: bool, stage: str) -> Iterator[tuple[Window, np.ndarray]]:
        rendered = _ordered_map(lambda w: render.render_dapi(w, nuclei, cells, staining, noise_seed), windows, workers)
        for i, (win, (dapi, nuc, cell)) in enumerate(zip(windows, rendered, strict=True)):
            if record:
                zarr_writer.write_masks(win, nuc, cell)
                nucleus_stats.add(win, nuc)
                cell_stats.add(win, cell)
            progress(stage, i + 1, len(windows))
            yield win, dapi

    def kit_tiles(channel: int, stage: str) -> Iterator[tuple[Window, np.ndarray]]:
        rendered = _ordered_map(
            lambda w: render.render_kit_channel(w, channel, cells, nuclei, staining, params.seed), windows, workers
        )
        for i, (win, img) in enumerate(zip(windows, rendered, strict=True)):
            progress(stage, i + 1, len(windows))
            yield win, img

    def write(path: Path, tiles: Iterable[tuple[Window, np.ndarray]], xml: str) -> None:
        write_pyramid(
            path,
            tiles,
            params.height,
            params.width,
            tile=params.tile,
            description=xml,
            pixel_size=params.pixel_size,
            codec=params.codec,
            workers=workers,
        )

    for i, f in enumerate(files):
        xml = ome_xml(files, i, params.height, params.width, params.pixel_size, channel_id)
        stage = f"image {i + 1}/{n_files} {f.filename}"
        tiles = dapi_tiles(params.seed, True, stage) if i == 0 else kit_tiles(i, stage)
        write(root / folder / f.filename, tiles, xml)
    if profile.image_layout == "v1":
        # The MIP differs from the focus image only by its noise: same cells, same place.
        mip = channel_files(["DAPI"], [XeniumFile.MORPHOLOGY_MIP_V1.value], params.seed)
        xml = ome_xml(mip, 0, params.height, params.width, params.pixel_size, channel_id)
        write(root / mip[0].filename, dapi_tiles(params.seed + 1, False, f"image {n_files}/{n_files} MIP"), xml)
    return f"{folder}/{files[0].filename}" if folder != "." else files[0].filename


def _write_transcripts(
    writer: tables.TranscriptWriter,
    ids: np.ndarray,
    pop: biology.Population,
    counts: np.ndarray,
    cell_area: np.ndarray,
    params: SynthParams,
    rng: np.random.Generator,
    progress: Progress,
) -> None:
    """One row per counted molecule (Q >= 20, the matrix is their exact tally), plus low-quality and
    unassigned molecules that the matrix does not count."""
    n = len(ids)
    cell_radius = np.sqrt(cell_area / np.pi)
    width_um, height_um = params.width * params.pixel_size, params.height * params.pixel_size
    fov_cols = -(-params.width // FOV_PX)

    def fov_names(xy: np.ndarray) -> np.ndarray:
        col = np.clip(xy[:, 0] / params.pixel_size // FOV_PX, 0, fov_cols - 1).astype(int)
        row = np.clip(xy[:, 1] / params.pixel_size // FOV_PX, 0, 25).astype(int)
        return np.char.add(np.array([chr(65 + r) for r in range(26)])[row], (col + 1).astype("U"))

    def emit(cell: np.ndarray, feature: np.ndarray, qv: np.ndarray) -> None:
        k = len(cell)
        nucleated = pop.n_nuclei[cell] > 0
        in_nucleus = nucleated & (rng.random(k) < 0.35)
        theta = rng.uniform(0, 2 * np.pi, k)
        r_nuc = pop.semi_minor[cell] * 0.9 * np.sqrt(rng.random(k))
        inner = np.where(nucleated, pop.semi_major[cell] * 1.05, 0.0)
        outer = np.maximum(cell_radius[cell] * 0.85, inner + 0.5)
        r_cyto = np.sqrt(rng.uniform(inner**2, outer**2))
        r = np.where(in_nucleus, r_nuc, r_cyto)
        xy = pop.xy_um[cell] + r[:, None] * np.column_stack([np.cos(theta), np.sin(theta)])
        xy = np.clip(xy, 0, [width_um - 1e-3, height_um - 1e-3])
        z = rng.uniform(8.0, 30.0, k)
        dist = np.where(in_nucleus, 0.0, np.maximum(r - pop.semi_major[cell], 0.1))
        writer.write(ids[cell], feature, np.column_stack([xy, z]), qv, in_nucleus, dist, fov_names(xy))

    def quantised_qv(low: float, high: float, k: int, skew: float) -> np.ndarray:
        return np.round((low + (high - low) * rng.beta(skew, 1.0, k)) * 4) / 4

    starts = range(0, n, TRANSCRIPT_CHUNK_CELLS)
    for step, c0 in enumerate(starts):
        block = counts[c0 : c0 + TRANSCRIPT_CHUNK_CELLS]
        rows, feats = np.nonzero(block)
        reps = block[rows, feats]
        cell = np.repeat(rows + c0, reps)
        feature = np.repeat(feats, reps)
        emit(cell, feature, quantised_qv(20.0, 40.0, len(cell), 3.0))
        low = rng.random(len(cell)) < LOW_QV_FRACTION
        emit(cell[low], feature[low], np.minimum(quantised_qv(5.0, 19.75, int(low.sum()), 1.5), 19.75))
        progress("transcripts", step + 1, len(starts))
    k = int(counts.sum() * UNASSIGNED_FRACTION)
    xy = rng.uniform([0, 0], [width_um, height_um], size=(k, 2))
    writer.write(
        np.full(k, None, dtype=object),
        rng.integers(0, counts.shape[1], k),
        np.column_stack([xy, rng.uniform(8.0, 30.0, k)]),
        quantised_qv(20.0, 40.0, k, 3.0),
        np.zeros(k, dtype=bool),
        np.full(k, 5.0),
        fov_names(xy),
    )


def generate_bundle(
    out: str | os.PathLike, params: SynthParams, *, overwrite: bool = False, progress: Progress = no_progress
) -> SynthResult:
    """Write the bundle at ``out`` and its ground truth at ``<out>.truth.parquet`` / ``.truth.json``."""
    out = Path(out).resolve()
    profile = PROFILES[params.version]
    rng = np.random.default_rng(params.seed)
    workers = params.workers or min(4, os.cpu_count() or 1)
    width_um, height_um = params.width * params.pixel_size, params.height * params.pixel_size
    classes = biology.CLASSES[: params.n_classes]

    progress("tissue", 0, 1)
    crowded = None
    if params.crowding > 0:
        xy, crowded = biology.place_crowded_cells(
            params.n_cells, width_um, height_um, EDGE_MARGIN_UM, params.crowding, rng
        )
    else:
        xy = biology.place_cells(params.n_cells, width_um, height_um, EDGE_MARGIN_UM, rng)
    cls = biology.assign_regions(xy, params.n_classes, width_um, height_um, purity=REGION_PURITY, rng=rng)
    # Drawn only when asked for, so that other bundles stay what the same seed always made.
    morph_cls = (
        biology.independent_regions(xy, cls, params.n_classes, width_um, height_um, REGION_PURITY, rng)
        if params.null_regions
        else None
    )
    pop = biology.draw_morphology(
        xy,
        cls,
        classes,
        null=params.null,
        multinucleate=profile.multinucleate,
        rng=rng,
        morph_cls=morph_cls,
        crowded=crowded,
    )
    outlines = build_outlines(pop, width_um, height_um, params.pixel_size, crowded=crowded)
    ids = _cell_ids(params.n_cells, profile, rng)
    panel = biology.build_panel(classes, rng)
    # A stream of its own, so that bundles without a shift stay what the same seed always made.
    panel = biology.shift_panel(panel, classes, params.expression_shift, np.random.default_rng([params.seed, 1]))
    features = tables.build_features(panel.genes, profile)
    counts, qc_flag = _counts(panel, features, cls, rng)
    progress("tissue", 1, 1)

    n_nuc = len(outlines.nucleus_cell)
    nuclei = PolygonRaster(polygons_from_rings(outlines.nucleus_xy / params.pixel_size), np.arange(1, n_nuc + 1))
    cells = PolygonRaster(polygons_from_rings(outlines.cell_xy / params.pixel_size), np.arange(1, len(ids) + 1))
    nucleus_stats, cell_stats = _LabelStats(n_nuc), _LabelStats(len(ids))
    truth_table, truth_json = truth_paths(out)

    with atomic_dir(out, overwrite=overwrite) as root:
        zarr_writer = CellsZarrWriter(
            root / XeniumFile.CELLS_ZARR, profile, len(ids), params.height, params.width, params.tile
        )
        try:
            focus_path = _write_images(
                root,
                params,
                profile,
                nuclei,
                cells,
                _staining(pop, outlines, params.n_classes),
                zarr_writer,
                nucleus_stats,
                cell_stats,
                workers,
                progress,
            )
        except BaseException:
            zarr_writer.abort()
            raise
        px2 = params.pixel_size**2
        cell_area = cell_stats.count[1:] * px2
        cell_centroid = (
            np.column_stack([cell_stats.sum_x[1:], cell_stats.sum_y[1:]])
            / np.maximum(cell_stats.count[1:, None], 1)
            * params.pixel_size
        )
        owner = outlines.nucleus_cell
        nucleus_count = np.bincount(owner, minlength=len(ids))
        nuc_pixels = np.bincount(owner, weights=nucleus_stats.count[1:], minlength=len(ids))
        nucleus_area = np.where(nucleus_count > 0, nuc_pixels * px2, np.nan)
        nuc_centroid = (
            np.column_stack(
                [
                    np.bincount(owner, weights=nucleus_stats.sum_x[1:], minlength=len(ids)),
                    np.bincount(owner, weights=nucleus_stats.sum_y[1:], minlength=len(ids)),
                ]
            )
            / np.maximum(nuc_pixels[:, None], 1)
            * params.pixel_size
        )
        nuc_centroid[nucleus_count == 0] = np.nan
        summary = np.column_stack([cell_centroid, cell_area, nuc_centroid, nucleus_area, np.zeros(len(ids))])
        zarr_writer.finish(ids, summary, nucleus_count, outlines.cell_xy, outlines.nucleus_xy, owner, params.pixel_size)

        progress("tables", 0, 1)
        tables.write_cells(
            root,
            ids,
            cell_centroid,
            cell_area,
            nucleus_area,
            nucleus_count,
            tables.count_columns(features, counts, profile),
            profile,
            params.csv,
        )
        tables.write_boundaries(
            root,
            XeniumFile.CELL_BOUNDARIES_PARQUET,
            XeniumFile.CELL_BOUNDARIES_CSV,
            outlines.cell_xy,
            ids,
            np.arange(1, len(ids) + 1),
            profile,
            params.csv,
        )
        tables.write_boundaries(
            root,
            XeniumFile.NUCLEUS_BOUNDARIES_PARQUET,
            XeniumFile.NUCLEUS_BOUNDARIES_CSV,
            outlines.nucleus_xy,
            ids[owner],
            np.arange(1, n_nuc + 1),
            profile,
            params.csv,
        )
        tables.write_matrix_h5(root, ids, features, counts)
        tables.write_matrix_mtx(root, ids, features, counts)
        tables.write_matrix_zarr(root, ids, features, counts, profile.string_ids)
        tables.write_analysis(root, ids, counts[:, : len(panel.genes)], params.n_classes, params.seed)
        progress("tables", 1, 1)
        writer = tables.TranscriptWriter(root, features, profile, params.csv)
        try:
            _write_transcripts(writer, ids, pop, counts, cell_area, params, rng, progress)
        finally:
            writer.close()
        region = params.region_name or out.name
        tables.write_experiment(
            root,
            tables.experiment_json(
                profile,
                run_name=f"synthetic seed {params.seed}",
                region_name=region,
                n_cells=len(ids),
                n_transcripts=writer.rows,
                pixel_size=params.pixel_size,
                focus_path=focus_path,
                panel_targets=len(panel.genes),
            ),
        )

        truth = pa.table(
            {
                "cell_id": pa.array(ids.astype("U").tolist()),
                "label": pa.array([classes[k].name for k in cls]),
                "class_index": pa.array(cls.astype(np.int32)),
                "morphology_class": pa.array([classes[k].name for k in pop.morph_cls]),
                "x_um": pa.array(pop.xy_um[:, 0]),
                "y_um": pa.array(pop.xy_um[:, 1]),
                "n_nuclei": pa.array(pop.n_nuclei.astype(np.int32)),
                "qc_flag": pa.array(qc_flag.tolist(), pa.string()),
                "crowded": pa.array(np.zeros(len(ids), dtype=bool) if crowded is None else crowded),
                "touching": pa.array(touching(outlines, len(ids), TOUCH_PX * params.pixel_size)),
            }
        )
        with atomic_file(truth_table) as tmp:
            pq.write_table(truth, tmp)
        write_json(
            truth_json,
            {
                "params": asdict(params),
                "xoa_version": profile.analysis_sw_version,
                "classes": {c.name: list(c.markers) for c in classes},
                "shared_genes": list(biology.SHARED_GENES),
                "control_feature_types": [t.value for t in profile.control_types],
                "n_cells": len(ids),
                "n_nuclei": n_nuc,
                "n_transcripts": writer.rows,
                "null": params.null,
                "null_regions": params.null_regions,
                "crowding": params.crowding,
                "touching_within_px": TOUCH_PX,
                "expression_depth": panel.depth,
                "gene_feature_type": FeatureType.GENE.value,
            },
        )
    return SynthResult(out, truth_table, len(ids), n_nuc, writer.rows)
