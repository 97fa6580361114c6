"""Cut the patches of one tile: DAPI crops by fancy indexing, masks from a compiled scan conversion.

Pixels never depend on labels: every valid cell gets its patch, labelled or not, and labels are joined
by key (``sample/cell_id``) when training reads the shards, so a label change never re-cuts a shard.
``plan_cells`` decides, for all cells of a sample at once, which are eligible and why the others are
skipped, and groups them by owning tile. ``extract_tile`` (a dask task) then works through its tile
in equal blocks of at most BLOCK_PX² plus a half-patch halo, so memory does not grow with tile or
slide size: per block, one DAPI read from the transcoded store; per CHUNK_CELLS cells of the block,
their crops in one indexing operation and one kernel call for the masks of all of them (``PatchMasks``),
written straight into the tar writer's buffer. No Python loop over cells touches pixels.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from xenium_assets.bundle.polygons import SkipReason, skip_codes
from xenium_assets.layout import GeometryFiles
from xenium_assets.patches import shards
from xenium_assets.patches.dapi_store import ChunkFiles, DapiStore
from xenium_assets.patches.geometry import TileRings, gather, read_context_px, read_target_grid, read_tile_rings
from xenium_assets.patches.grid import PatchSpec, tile_window
from xenium_assets.patches.masks import MASK_NUCLEUS, MASK_PERINUCLEAR, NucleusRings

BLOCK_PX = 1280
"""Largest block side. A tile of the 8 x 8 grid is 1250 px on a 10k² slide: blocks of 1250² there and on
20k² (four) keep a worker's peak nearly the same on both; blocks of up to 2048² peaked about 55 MB higher on
20k² and cut tiles no faster (0.43 against 0.42 ms a patch, six 20k² tiles in one process)."""
CHUNK_CELLS = 128
"""Cells cut at once (their samples' tar bytes, about 4 MB), whatever the density."""
# Weights of a patch's polygons in one winding count: its cell's outline, its cell's nuclei, other cells'
# nuclei (up to 15 overlapping outlines or own nuclei).
_OWN_CELL, _OWN_NUCLEUS, _OTHER_NUCLEUS = 1, 16, 256

# Skip reasons, most fundamental first: a cell is counted under the first that applies. Each of raw_bundle's
# problems names its own (CellProblem.skip), so there is no catch-all for a reason nobody mapped.
SKIP_ORDER = tuple(reason.value for reason in SkipReason)


def plan_cells(
    cells: pd.DataFrame, problems: pd.DataFrame, shape: tuple[int, int]
) -> tuple[pd.DataFrame, dict[str, dict[str, int]]]:
    """Eligible cells (sorted by tile, then cell id) and skipped cells per tile by reason.

    ``cells``: the geometry table (cell_id, tile, centre, areas, n_nuclei); ``problems``: raw_bundle's
    cell problems (cell_id, reason), each counted under its CellProblem's skip reason (a flag that skips nothing,
    such as multinucleate, is ignored); a reason that is not a CellProblem is a ValueError.
    Reasons are small integers until the counts, and the sort is arrow's: with the same rules on strings (object
    comparisons, pandas' sort of object ids, a value count per tile) ``tile_tasks`` took 0.49-0.58 s for a
    100,000-cell sample, now 0.32-0.36 s, all of it while the workers wait.
    """
    none = len(SKIP_ORDER)
    raw_code = pd.Series(skip_codes(problems["reason"])).groupby(problems["cell_id"].to_numpy()).min()
    from_raw = cells["cell_id"].map(raw_code).fillna(none).to_numpy(dtype=np.int64)
    height, width = shape
    row, col = cells["row_px"].to_numpy(), cells["col_px"].to_numpy()
    off = ~((row >= 0) & (row < height) & (col >= 0) & (col < width))
    code = np.full(len(cells), none, dtype=np.int64)
    for name, mask in (
        (SkipReason.OFF_IMAGE, off),
        (SkipReason.NO_CELL_BOUNDARY, cells["cell_area_um2"].to_numpy() <= 0),
        (SkipReason.NO_NUCLEUS, cells["n_nuclei"].to_numpy() == 0),
    ):
        code[mask] = np.minimum(code[mask], SKIP_ORDER.index(name))
    code = np.minimum(code, from_raw)
    reason = np.asarray(SKIP_ORDER + ("",), dtype=object)[code]
    skip = reason != ""
    counts = pd.DataFrame({"tile": cells["tile"].to_numpy()[skip], "reason": reason[skip]}).value_counts()
    skipped: dict[str, dict[str, int]] = {}
    for (tile, why), n in counts.items():
        skipped.setdefault(tile, {})[why] = int(n)
    keep = np.flatnonzero(~skip)
    order = pc.sort_indices(
        pa.table({"tile": cells["tile"].to_numpy()[keep], "cell_id": cells["cell_id"].to_numpy()[keep]}),
        sort_keys=[("tile", "ascending"), ("cell_id", "ascending")],
    )
    return cells.take(keep[order.to_numpy()]).reset_index(drop=True), skipped


def _by_tile(eligible: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Each tile's rows of ``plan_cells``' table (sorted by tile): slices, not a group-by."""
    tiles = eligible["tile"].to_numpy()
    starts = np.flatnonzero(np.r_[True, tiles[1:] != tiles[:-1]]) if len(tiles) else np.zeros(0, dtype=np.int64)
    ends = np.r_[starts[1:], len(tiles)]
    return {tiles[a]: eligible.iloc[a:b] for a, b in zip(starts, ends, strict=True)}


@dataclass
class TileTask:
    """Everything a worker needs for one tile (it pickles: workers may be other processes or hosts)."""

    sample: str
    tile: str
    cells: pd.DataFrame
    skipped: dict[str, int]
    store: str
    shape: tuple[int, int]
    pixel_size_um: float
    resampled: bool
    geometry_dir: str
    out_dir: str
    spec: PatchSpec = field(default_factory=PatchSpec)
    percentiles: dict[str, float] = field(default_factory=dict)
    max_per_shard: int = shards.MAX_SAMPLES_PER_SHARD
    examples: int = 3
    """Patches of the tile kept for the gallery picture."""


def tile_tasks(
    sample: str,
    store: DapiStore,
    geometry_dir: Path,
    problems: pd.DataFrame,
    tiles: list[str],
    out_root: Path,
    spec: PatchSpec,
    **options,
) -> list[TileTask]:
    """One task per requested tile, eligibility decided for the whole sample at once.

    ``problems``: raw_bundle's invalid cells; ``options``: TileTask fields such as max_per_shard and examples.
    """
    split = read_target_grid(geometry_dir)
    if split is not None and (tuple(split.shape), split.pixel_size_um) != (tuple(store.shape), store.pixel_size_um):
        raise ValueError(
            f"{GeometryFiles(Path(geometry_dir)).cells}: polygons split on a {split.shape} px grid at "
            f"{split.pixel_size_um} µm/px, "
            f"but the DAPI store is {store.shape} px at {store.pixel_size_um} µm/px; re-materialize tile_geometry "
            "and dapi_zarr with the same patch geometry"
        )
    context = read_context_px(geometry_dir)
    if context < spec.context_px:
        raise ValueError(
            f"{GeometryFiles(Path(geometry_dir)).cells}: polygons were listed {context} px beyond their tiles, but "
            f"patches of {spec.size_um:g} µm with a {spec.ring_um:g} µm ring need {spec.context_px} px; "
            "re-materialize tile_geometry"
        )
    cells = pq.read_table(GeometryFiles(Path(geometry_dir)).cells).to_pandas()
    eligible, skipped = plan_cells(cells, problems, store.shape)
    by_tile = _by_tile(eligible)
    return [
        TileTask(
            sample=sample,
            tile=tile,
            cells=by_tile.get(tile, eligible.iloc[0:0]),
            skipped=skipped.get(tile, {}),
            store=store.path,
            shape=store.shape,
            pixel_size_um=store.pixel_size_um,
            resampled=store.resampled,
            geometry_dir=str(geometry_dir),
            out_dir=str(Path(out_root) / tile),
            spec=spec,
            percentiles=store.percentiles,
            **options,
        )
        for tile in tiles
    ]


def largest_first(tasks: list[TileTask]) -> list[TileTask]:
    """The tasks in the order to submit them, most cells first: the last to start are the shortest, so the workers
    finish nearly together instead of one finishing a large tile alone."""
    return sorted(tasks, key=lambda task: -len(task.cells))


def crop(array: np.ndarray, top: np.ndarray, left: np.ndarray, size: int) -> np.ndarray:
    """(n, size, size) windows of ``array`` at the given top-left corners, in one indexing operation
    (on a sliding-window view: 4x faster than indexing with broadcast row and column grids)."""
    return np.lib.stride_tricks.sliding_window_view(array, (size, size))[top, left]


class PatchMasks:
    """Nucleus and perinuclear masks of any cells of one tile, from the tile's polygons (target px).

    The polygons drawn in a cell's window: its own (its outline and nuclei), and the nuclei of the squares of a
    grid (the window's side) that the window touches, each nucleus listed in every square its bounding box
    touches. That is a superset of the nuclei reaching the window, and a ring that misses a window adds nothing
    to it. Found with numpy: an STR-tree of the rings' boxes, queried with the windows' boxes, cost 8-13 µs a
    patch, most of it building shapely boxes.
    """

    def __init__(self, rings: TileRings, size: int) -> None:
        self.rings, self.size = rings, size
        self.owner, self.is_nucleus = rings.owner, rings.nucleus
        starts = rings.offsets[:-1]
        self.starts, self.lengths = starts, np.diff(rings.offsets)
        # Rings by owner: owner k's are by_owner[owner_start[k]:owner_start[k + 1]].
        self.by_owner = np.argsort(self.owner, kind="stable")
        self.owner_start = np.searchsorted(self.owner[self.by_owner], np.arange(len(rings.cell_ids) + 1))
        nuclei = np.flatnonzero(self.is_nucleus)
        if len(nuclei):
            x0, y0 = (np.minimum.reduceat(v, starts)[nuclei] for v in (rings.x, rings.y))
            x1, y1 = (np.maximum.reduceat(v, starts)[nuclei] for v in (rings.x, rings.y))
            self.origin = np.floor([y0.min(), x0.min()])
        else:
            x0 = y0 = x1 = y1 = np.zeros(0)
            self.origin = np.zeros(2)
        row0, col0 = self._square(y0, 0), self._square(x0, 1)
        rows, cols = self._square(y1, 0) - row0 + 1, self._square(x1, 1) - col0 + 1
        self.grid_shape = (int((row0 + rows).max(initial=1)), int((col0 + cols).max(initial=1)))
        per_nucleus = rows * cols
        nucleus = np.repeat(np.arange(len(nuclei)), per_nucleus)
        k = gather(np.zeros(len(nuclei), dtype=np.int64), per_nucleus, np.arange(len(nuclei)))[0]
        square = (row0[nucleus] + k // cols[nucleus]) * self.grid_shape[1] + col0[nucleus] + k % cols[nucleus]
        order = np.argsort(square, kind="stable")
        self.square_nuclei = nuclei[nucleus[order]]
        self.square_start = np.searchsorted(square[order], np.arange(self.grid_shape[0] * self.grid_shape[1] + 1))

    def _square(self, coordinate: np.ndarray, axis: int) -> np.ndarray:
        """The grid row (axis 0, of y) or column (axis 1, of x) holding each coordinate."""
        return ((np.asarray(coordinate, dtype=float) - self.origin[axis]) // self.size).astype(np.int64)

    def _pairs(self, codes: np.ndarray, top: np.ndarray, left: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(window, ring) pairs to draw, grouped by window, each once: every window's own rings and the nuclei
        of the grid squares it touches."""
        n_windows = len(top)
        known = codes >= 0  # a cell with no polygon in the tile has none of its own to draw
        first, count = np.zeros((2, n_windows), dtype=np.int64)
        first[known] = self.owner_start[codes[known]]
        count[known] = np.diff(self.owner_start)[codes[known]]
        at = gather(first, count, np.arange(n_windows))[0]
        # The 2 x 2 squares under a window's corners (the same square twice where the window fits in one).
        corner_rows = [self._square(top + d, 0) for d in (0, self.size)]
        corner_cols = [self._square(left + d, 1) for d in (0, self.size)]
        window = np.tile(np.arange(n_windows), 4)
        row = np.concatenate([r for r in corner_rows for _ in range(2)])
        col = np.concatenate(corner_cols * 2)
        inside = (row >= 0) & (row < self.grid_shape[0]) & (col >= 0) & (col < self.grid_shape[1])
        window, square = window[inside], (row * self.grid_shape[1] + col)[inside]
        listed = np.diff(self.square_start)[square]
        at_square = gather(self.square_start[square], listed, np.arange(len(square)))[0]
        windows = np.concatenate([np.repeat(np.arange(n_windows), count), np.repeat(window, listed)])
        ring = np.concatenate([self.by_owner[at], self.square_nuclei[at_square]])
        key = np.unique(windows * len(self.starts) + ring)  # sorted by window, duplicates dropped
        return key // max(len(self.starts), 1), key % max(len(self.starts), 1)

    def owners(self, cell_ids: np.ndarray) -> np.ndarray:
        """The polygon owner code of each cell id (-1: no polygon in the tile), what ``__call__`` takes: found once
        for a tile's cells, as a lookup of object ids per chunk of cells cost 7 µs a cell."""
        found = pc.index_in(pa.array(np.asarray(cell_ids, dtype=object), pa.string()), value_set=self.rings.cell_ids)
        return found.fill_null(-1).to_numpy().astype(np.int64)

    def __call__(
        self, codes: np.ndarray, top: np.ndarray, left: np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray:
        """(n, size, size) uint8 masks (into ``out`` if given) of the windows at ``top``, ``left`` of the cells whose
        ``owners`` codes are ``codes``.

        Nucleus: in the cell's nuclei and in no other cell's. Perinuclear: inside the cell's outline and in no
        nucleus at all, so a neighbour's nucleus never enters the masks. Where two outlines overlap outside
        every nucleus, the pixel is perinuclear to both: no cell wins it by its id or its drawing order (see
        the null-slide note at PolygonRaster).
        """
        from xenium_assets.patches.kernels import label_windows

        size = self.size
        top, left = np.asarray(top, dtype=np.int64), np.asarray(left, dtype=np.int64)
        window, ring = self._pairs(codes, top, left)
        own = self.owner[ring] == codes[window]
        weight = np.where(own, np.where(self.is_nucleus[ring], _OWN_NUCLEUS, _OWN_CELL), _OTHER_NUCLEUS)
        out = np.empty((len(top), size, size), dtype=np.uint8) if out is None else out
        # Counts 1-15: inside its own outline (up to 15 of them) and in no nucleus; 16-255: in a nucleus of its
        # own and in no other cell's; negative ones (invalid outlines) and 256 up: in no mask.
        label_windows(
            self.rings.x,
            self.rings.y,
            self.starts,
            self.lengths,
            window,
            ring,
            weight.astype(np.int32),
            top,
            left,
            _OWN_NUCLEUS,
            _OTHER_NUCLEUS,
            (MASK_PERINUCLEAR, MASK_NUCLEUS),
            out,
        )
        return out


def _metadata(task: TileTask, cells: pd.DataFrame, top: np.ndarray, left: np.ndarray, edge: np.ndarray) -> list[bytes]:
    """The sample JSON of ``cells`` (rows of the task's), formatted column by column: the same bytes as
    ``json.dumps`` of a dict per cell, in about 7 µs a cell against 28 µs for building and dumping the dicts."""
    dumps = json.dumps

    def numbers(values: np.ndarray) -> list[str]:
        # One dumps per column: JSON's own spelling of every float (NaN, Infinity included).
        return dumps(np.asarray(values, dtype=float).tolist())[1:-1].split(", ") if len(values) else []

    flag_names = [("edge_padded", edge), ("multinucleate", cells["n_nuclei"].to_numpy() > 1)]
    flag_text = {}
    flags = []
    for on in zip(*(f for _, f in flag_names), strict=True):
        if on not in flag_text:
            names = [name for (name, _), o in zip(flag_names, on, strict=True) if o]
            flag_text[on] = dumps(names + (["resampled"] if task.resampled else []))
        flags.append(flag_text[on])
    head = f'{{"sample": {dumps(task.sample)}, "cell_id": '
    tile = f', "tile": {dumps(task.tile)}'
    pixel = f', "pixel_size_um": {dumps(float(task.pixel_size_um))}, "patch_um": {dumps(float(task.spec.size_um))}'
    columns = zip(
        map(json.encoder.encode_basestring_ascii, cells["cell_id"].astype(str)),
        numbers(cells["nucleus_area_um2"]),
        numbers(cells["cell_area_um2"]),
        numbers(cells["x_um"]),
        numbers(cells["y_um"]),
        top.tolist(),
        left.tolist(),
        flags,
        strict=True,
    )
    return [
        (
            f'{head}{cid}{tile}, "nucleus_area_um2": {nuc}, "cell_area_um2": {area}{pixel}, '
            f'"centroid_um": [{x}, {y}], "origin_px": [{t}, {l_}], "flags": {flag}}}'
        ).encode()
        for cid, nuc, area, x, y, t, l_, flag in columns
    ]


def sample_keys(sample: str, cell_ids: np.ndarray) -> np.ndarray:
    """The shard keys ``sample/cell_id`` of ``cell_ids``, joined by arrow in one call."""
    ids = pa.array(np.asarray(cell_ids, dtype=object), pa.string())
    return pc.binary_join_element_wise(f"{sample}/", ids, "").to_numpy(zero_copy_only=False)


def warm_up() -> float:
    """Load what the transcode and tile tasks run into this process, the compiled mask kernel included; returns
    the seconds it took. Run once on every dask worker (``client.run``) before the tasks: a worker's first tile
    otherwise pays it (about 1.4 s with numba's on-disk cache, 6 s without).
    """
    start = time.perf_counter()
    from skimage.segmentation import expand_labels  # noqa: F401 (the rings')

    from xenium_assets.patches import dapi_store  # noqa: F401 (the transcode's task module)
    from xenium_assets.patches.kernels import label_windows

    # No windows, but the argument types of a tile's calls: numba compiles (or loads) one version per types.
    xy, index, weight = np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32)
    masks = np.zeros((2, 2, 3), dtype=np.uint8)[:, :, :2]  # strided, as the tar buffer's mask view
    labels = (MASK_PERINUCLEAR, MASK_NUCLEUS)
    label_windows(xy, xy, index, index, index, index, weight, index, index, _OWN_NUCLEUS, _OTHER_NUCLEUS, labels, masks)
    return time.perf_counter() - start


def extract_tile(task: TileTask) -> dict:
    """Write the tile's shards and index; return its counts, a few example patches, and timings."""
    start = time.perf_counter()
    out = Path(task.out_dir)
    size, half = task.spec.size_px, task.spec.halo_px
    cells = task.cells
    rings = read_tile_rings(Path(task.geometry_dir), task.tile)
    masks = PatchMasks(rings, size)
    territories = NucleusRings(rings.polygons()[rings.nucleus], rings.owner[rings.nucleus], task.spec.ring_px)
    cell_ids = cells["cell_id"].to_numpy(dtype=object)
    owners = masks.owners(cell_ids)
    image = ChunkFiles.open(task.store)
    height, width = task.shape
    row_px, col_px = cells["row_px"].to_numpy(), cells["col_px"].to_numpy()
    top = np.floor(row_px - half + 0.5).astype(np.int64)
    left = np.floor(col_px - half + 0.5).astype(np.int64)
    edge = ~((top >= 0) & (left >= 0) & (top + size <= height) & (left + size <= width))
    shard_of = np.full(len(cells), None, dtype=object)
    examples: list[tuple[np.ndarray, np.ndarray]] = []
    writer = shards.TileShardWriter(out, max_count=task.max_per_shard)
    try:
        for block in tile_window(task.tile, height, width).split(BLOCK_PX):
            pick = np.flatnonzero(
                (row_px >= block.y0)
                & (row_px < block.y0 + block.h)
                & (col_px >= block.x0)
                & (col_px < block.x0 + block.w)
            )
            if not len(pick):
                continue
            region = block.pad(half)
            pixels = image.read(region)
            block_rings = territories.block(region)
            # The block's keys and JSON, not the tile's: those would grow with the tile's cells, so with the slide.
            keys = sample_keys(task.sample, cell_ids[pick]).tolist()
            metas = _metadata(task, cells.iloc[pick], top[pick], left[pick], edge[pick])
            # Crops are made CHUNK_CELLS at a time: a block's worth at once would grow with cell density.
            for first in range(0, len(pick), CHUNK_CELLS):
                at = slice(first, first + CHUNK_CELLS)
                chunk = pick[at]
                samples = writer.chunk(keys[at], metas[at], (size, size))
                samples.dapi[...] = crop(pixels, top[chunk] - region.y0, left[chunk] - region.x0, size)
                masks(owners[chunk], top[chunk], left[chunk], out=samples.mask)
                block_rings.add_rings(samples.mask, owners[chunk], top[chunk], left[chunk])
                shard_of[chunk] = writer.write(samples)
                for j in range(min(len(chunk), task.examples - len(examples))):
                    examples.append((samples.dapi[j].copy(), samples.mask[j].copy()))
                # Freed before the next chunk and block are made, not when their names are rebound
                # (after them): otherwise two blocks' pixels are alive at once, in tiles of several blocks.
                del samples
            del pixels, block_rings, keys, metas
    finally:
        published = writer.close()
    written = np.array([s is not None for s in shard_of], dtype=bool)
    index = pd.DataFrame(
        {
            "key": sample_keys(task.sample, cell_ids[written]),
            "cell_id": cell_ids[written],
            "shard": shard_of[written],
            "x_um": cells["x_um"].to_numpy()[written],
            "y_um": cells["y_um"].to_numpy()[written],
            "edge_padded": edge[written],
            "multinucleate": cells["n_nuclei"].to_numpy()[written] > 1,
        }
    )
    summary = {
        "sample": task.sample,
        "tile": task.tile,
        "n_patches": len(index),
        "skipped": task.skipped,
        "shards": published,
        "patch_px": size,
        "pixel_size_um": task.pixel_size_um,
    }
    tile = tile_window(task.tile, height, width)
    bounds = [tile.x0, tile.y0, tile.x0 + tile.w, tile.y0 + tile.h]
    metadata = {
        "dapi_percentiles": json.dumps(task.percentiles),
        "patch_px": str(size),
        "pixel_size_um": str(task.pixel_size_um),
        "patch_um": str(size * task.pixel_size_um),
        shards.RING_UM: str(task.spec.ring_um),
        shards.TILE_BOUNDS: json.dumps([b * task.pixel_size_um for b in bounds]),
    }
    shards.finish_tile(out, index, summary, metadata)
    return {
        **summary,
        "bytes": sum((out / s).stat().st_size for s in published),
        "seconds": time.perf_counter() - start,
        "examples": examples,
    }
