"""Split a sample's cell and nucleus polygons by tile, streaming, and find each cell's patch centre.

The boundary tables are read in record batches (``bundle.polygons.iter_polygons``: a polygon cut by a
batch boundary is carried over to the next batch), so a whole-slide polygon table never sits in memory.
Each polygon goes to every tile whose halo-expanded window its bounding box touches; each tile's polygons land
in their own Arrow IPC file (pixel coordinates at the target pixel size), so a tile task reads only its own.
A cell's patch is centred on its nucleus centroid (area-weighted over all its nuclei); cells
without a nucleus are placed by their cell centroid, so they are still counted (and skipped) by a tile.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import shapely

from xenium_assets.atomic import PARTIAL, atomic_file
from xenium_assets.bundle.ids import normalise_ids
from xenium_assets.bundle.manifest import Manifest
from xenium_assets.bundle.polygons import iter_polygons, usable_polygons
from xenium_assets.bundle.tables import read_table
from xenium_assets.formats import Col
from xenium_assets.layout import GeometryFiles
from xenium_assets.patches import grid
from xenium_assets.progress import Progress, no_progress
from xenium_assets.raster import next_vertex

# Tiles' polygons are uncompressed Arrow IPC, not Parquet: a batch's polygons of one tile (about 3,600 lists of
# vertices) took 5-7 ms to write as Parquet with any codec and 3 ms to read, and 0.2 and 0.5 ms as IPC, for files
# 2.9x larger (11 against 32 MB for the 100,000 cells of the 20k² benchmark). Writing them was a third of the
# split's 2.2 CPU-s.
GRID_KEY = b"xenium_assets.target_grid"
POLYGON_SCHEMA = pa.schema(
    [("cell_id", pa.string()), ("kind", pa.string()), ("x", pa.list_(pa.float32())), ("y", pa.list_(pa.float32()))]
)


def gather(starts: np.ndarray, rows: np.ndarray, pick: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertex row indices of the picked polygons, and their list offsets (vectorised ragged gather)."""
    lengths = rows[pick]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    index = np.repeat(starts[pick] - offsets[:-1], lengths) + np.arange(offsets[-1])
    return index, offsets


def ring_moments(x: np.ndarray, y: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per ring (vertices ``offsets[k]:offsets[k + 1]``, closed or not): its area and its area times its centroid's
    x and y, what ``shapely.area`` and ``shapely.centroid`` give for the ring's polygon (the shoelace formula, from
    the ring's first vertex for precision, as GEOS does). A zero-area ring has zero moments, not a NaN centroid.

    Building shapely polygons only to measure them took 0.85 of the 3 CPU-s that splitting a 100,000-cell
    sample's polygons by tile cost (the split now takes 1.8); these sums take 0.17 s.
    """
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    following = next_vertex(offsets)
    base_x, base_y = x[starts], y[starts]
    dx, dy = x - np.repeat(base_x, lengths), y - np.repeat(base_y, lengths)
    nx, ny = dx[following], dy[following]
    cross = dx * ny - nx * dy
    signed = np.add.reduceat(cross, starts) / 2
    area, sign = np.abs(signed), np.sign(signed)
    mx = np.add.reduceat((dx + nx) * cross, starts) / 6
    my = np.add.reduceat((dy + ny) * cross, starts) / 6
    return area, area * base_x + sign * mx, area * base_y + sign * my


def polygons_from_offsets(coords: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """shapely Polygons from ragged vertices in one call; open rings are closed (linearrings does it)."""
    if len(offsets) < 2:
        return np.array([], dtype=object)
    ring = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    return shapely.polygons(shapely.linearrings(coords, indices=ring))


@dataclass
class GeometrySummary:
    n_cells: int
    n_polygons: dict[str, int]
    unknown_polygons: int
    cells_per_tile: dict[str, int]


def read_target_grid(folder: Path) -> grid.TargetGrid | None:
    """The pixel grid ``split_by_tile`` used (None for a cells.parquet written before it was recorded)."""
    meta = pq.read_schema(GeometryFiles(Path(folder)).cells).metadata or {}
    if GRID_KEY not in meta:
        return None
    data = json.loads(meta[GRID_KEY])
    return grid.TargetGrid(tuple(data["shape"]), data["pixel_size_um"], data["resampled"])


def read_context_px(folder: Path) -> int:
    """How far beyond its tile ``split_by_tile`` listed polygons (0 for a cells.parquet that does not say)."""
    meta = pq.read_schema(GeometryFiles(Path(folder)).cells).metadata or {}
    return int(json.loads(meta[GRID_KEY]).get("context_px", 0)) if GRID_KEY in meta else 0


def split_by_tile(
    manifest: Manifest, spec: grid.PatchSpec, out_dir: Path, progress: Progress = no_progress
) -> GeometrySummary:
    """Write ``out_dir/tiles/<tile>.arrow`` (polygons, target px) and ``out_dir/cells.parquet``.

    The pixel grid comes from the manifest (``grid.target_grid``), not from the DAPI store, so this runs
    beside the transcode; cells.parquet records it, and the tile tasks check it against the store's.
    """
    target = grid.target_grid(manifest, spec.pixel_size_um)
    height, width = target.shape
    ox, oy = manifest.image_origin_um
    ps = target.pixel_size_um
    halo = spec.context_px
    cells = read_table(manifest.path("cells"), [Col.CELL_ID, Col.X_CENTROID, Col.Y_CENTROID])
    ids = normalise_ids(cells[Col.CELL_ID])
    index = pd.Index(ids)
    if not index.is_unique:
        index = pd.Index(pd.unique(ids))
    n = len(index)
    nuc_area = np.zeros(n)
    nuc_sx, nuc_sy = np.zeros(n), np.zeros(n)
    n_nuclei = np.zeros(n, dtype=np.int64)
    cell_area = np.zeros(n)
    counts = {"cell": 0, "nucleus": 0}
    # Progress counts cells with a polygon of each kind split so far: a cell may have several nuclei.
    split = {"cell": np.zeros(n, dtype=bool), "nucleus": np.zeros(n, dtype=bool)}
    unknown = 0
    files = GeometryFiles(out_dir)
    tmp = out_dir / f".{files.tiles.name}{PARTIAL}{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    writers: dict[str, pa.ipc.RecordBatchFileWriter] = {}
    try:
        for kind, role in (("nucleus", "nucleus_boundaries"), ("cell", "cell_boundaries")):
            for batch in iter_polygons(manifest.path(role)):
                rows_px = (batch.y - oy) / ps
                cols_px = (batch.x - ox) / ps
                owner = index.get_indexer(batch.ids)
                unknown += int((owner < 0).sum())
                pick = usable_polygons(batch, owner)
                counts[kind] += len(pick)
                split[kind][owner[pick]] = True
                vidx, offsets = gather(batch.starts, batch.rows, pick)
                area, moment_x, moment_y = ring_moments(batch.x[vidx], batch.y[vidx], offsets)
                if kind == "nucleus":
                    np.add.at(nuc_area, owner[pick], area)
                    np.add.at(nuc_sx, owner[pick], moment_x)
                    np.add.at(nuc_sy, owner[pick], moment_y)
                    np.add.at(n_nuclei, owner[pick], 1)
                else:
                    np.add.at(cell_area, owner[pick], area)
                # Tiles touched by each polygon's bounding box grown by the halo.
                ymin = np.fmin.reduceat(rows_px, batch.starts)[pick] - halo
                ymax = np.fmax.reduceat(rows_px, batch.starts)[pick] + halo
                xmin = np.fmin.reduceat(cols_px, batch.starts)[pick] - halo
                xmax = np.fmax.reduceat(cols_px, batch.starts)[pick] + halo
                r0, r1 = grid.tile_ranges(ymin, ymax, height)
                c0, c1 = grid.tile_ranges(xmin, xmax, width)
                nr, nc = r1 - r0 + 1, c1 - c0 + 1
                pair_poly = np.repeat(np.arange(len(pick)), nr * nc)
                k = np.arange(len(pair_poly)) - np.repeat(np.cumsum(nr * nc) - nr * nc, nr * nc)
                pair_tile = (r0[pair_poly] + k // nc[pair_poly]) * grid.GRID + c0[pair_poly] + k % nc[pair_poly]
                vx, vy = cols_px[vidx].astype(np.float32), rows_px[vidx].astype(np.float32)
                # One sort, then each tile's pairs in polygon order (a comparison per tile cost 64 passes); with no
                # pairs there are no tiles and one empty piece, hence strict=False.
                by_tile = np.argsort(pair_tile, kind="stable")
                tiles, firsts = np.unique(pair_tile[by_tile], return_index=True)
                for tile, sel in zip(tiles, np.split(pair_poly[by_tile], firsts[1:]), strict=False):
                    sub_idx, sub_off = gather(offsets[:-1], np.diff(offsets), sel)
                    table = pa.table(
                        [
                            pa.array(batch.ids[pick[sel]].tolist(), pa.string()),
                            pa.array(np.full(len(sel), kind).tolist(), pa.string()),
                            pa.ListArray.from_arrays(pa.array(sub_off.astype(np.int32)), pa.array(vx[sub_idx])),
                            pa.ListArray.from_arrays(pa.array(sub_off.astype(np.int32)), pa.array(vy[sub_idx])),
                        ],
                        schema=POLYGON_SCHEMA,
                    )
                    key = grid.TILE_KEYS[tile]
                    if key not in writers:
                        writers[key] = pa.ipc.new_file(tmp / files.tile(key).name, POLYGON_SCHEMA)
                    writers[key].write_table(table)
                progress("split polygons by tile", int(split["nucleus"].sum() + split["cell"].sum()), 2 * n)
        for w in writers.values():
            w.close()
        final = files.tiles
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        for w in writers.values():
            w.close()
        if tmp.exists():
            shutil.rmtree(tmp)

    has_nucleus = n_nuclei > 0
    centre_x = np.where(has_nucleus, nuc_sx / np.maximum(nuc_area, 1e-12), np.nan)
    centre_y = np.where(has_nucleus, nuc_sy / np.maximum(nuc_area, 1e-12), np.nan)
    table_xy = pd.DataFrame({"x": cells[Col.X_CENTROID].to_numpy(), "y": cells[Col.Y_CENTROID].to_numpy()}, index=ids)
    table_xy = table_xy[~table_xy.index.duplicated()].loc[index]
    centre_x = np.where(has_nucleus, centre_x, table_xy["x"].to_numpy())
    centre_y = np.where(has_nucleus, centre_y, table_xy["y"].to_numpy())
    row_px, col_px = (centre_y - oy) / ps, (centre_x - ox) / ps
    tiles = grid.tiles_of(row_px, col_px, height, width)
    frame = pd.DataFrame(
        {
            "cell_id": index.to_numpy(dtype=object),
            "tile": tiles,
            "x_um": centre_x,
            "y_um": centre_y,
            "row_px": row_px,
            "col_px": col_px,
            "nucleus_area_um2": np.where(has_nucleus, nuc_area, np.nan),
            "cell_area_um2": cell_area,
            "n_nuclei": n_nuclei,
        }
    )
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata(
        {**table.schema.metadata, GRID_KEY: json.dumps({**asdict(target), "context_px": halo}).encode()}
    )
    with atomic_file(files.cells) as tmp_cells:
        pq.write_table(table, tmp_cells)
    return GeometrySummary(
        n_cells=n,
        n_polygons=counts,
        unknown_polygons=unknown,
        cells_per_tile=frame["tile"].value_counts().to_dict(),
    )


@dataclass
class TileRings:
    """One tile's polygons as ragged vertex arrays (target px): ring k is ``x[offsets[k]:offsets[k + 1]]``, owned by
    cell ``cell_ids[owner[k]]``, a nucleus where ``nucleus[k]``.

    Owners are codes into the tile's distinct cell ids and the vertices float32, as the file stores them: a tile
    task holds its rings while it runs, and with a Python string per ring for its owner and kind and float64
    vertices the rings took about 0.8 KB a cell of the tile, now 0.3 KB (the masks are the same bytes: the kernel
    computes in float64).
    """

    owner: np.ndarray
    cell_ids: pa.StringArray
    nucleus: np.ndarray
    x: np.ndarray
    y: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_ids(
        cls, ids: Sequence[str], kinds: Sequence[str], x: np.ndarray, y: np.ndarray, offsets: np.ndarray
    ) -> TileRings:
        """From an owner id and a kind ("cell" or "nucleus") per ring."""
        encoded = pa.array(np.asarray(ids, dtype=object), pa.string()).dictionary_encode()
        return cls(
            owner=encoded.indices.to_numpy().astype(np.int64),
            cell_ids=encoded.dictionary,
            nucleus=np.asarray(kinds, dtype=object) == "nucleus",
            x=np.array(x, dtype=np.float32),  # copies: writable and contiguous, as the mask kernel was compiled for
            y=np.array(y, dtype=np.float32),
            offsets=np.asarray(offsets, dtype=np.int64),
        )

    @property
    def ids(self) -> np.ndarray:
        """Each ring's owner cell id."""
        return self.cell_ids.take(pa.array(self.owner)).to_numpy(zero_copy_only=False)

    @property
    def kinds(self) -> np.ndarray:
        """Each ring's kind, "cell" or "nucleus"."""
        return np.where(self.nucleus, "nucleus", "cell").astype(object)

    def polygons(self) -> np.ndarray:
        return polygons_from_offsets(np.column_stack([self.x, self.y]).astype(np.float64), self.offsets)


def read_tile_rings(folder: Path, tile: str) -> TileRings:
    """The tile's polygons with their owner cell ids and kinds; empty if the tile has none."""
    path = GeometryFiles(Path(folder)).tile(tile)
    if not path.exists():
        if path.with_suffix(".parquet").exists():
            raise ValueError(
                f"{path.with_suffix('.parquet')}: an older tile_geometry's file; re-materialize tile_geometry"
            )
        return TileRings.from_ids([], [], np.zeros(0), np.zeros(0), np.zeros(1, dtype=np.int64))
    try:
        with pa.OSFile(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
    except (OSError, pa.ArrowInvalid) as error:
        raise ValueError(f"{path}: not readable ({error}); re-materialize tile_geometry") from error
    xs = table["x"].combine_chunks()
    offsets = xs.offsets.to_numpy().astype(np.int64)
    owners = table["cell_id"].combine_chunks().dictionary_encode()
    return TileRings(
        owner=owners.indices.to_numpy().astype(np.int64),
        cell_ids=owners.dictionary,
        nucleus=pc.equal(table["kind"], "nucleus").combine_chunks().to_numpy(zero_copy_only=False),
        # Copies: writable, as the mask kernel was compiled for, and not holding the file's other columns.
        x=xs.flatten().to_numpy(zero_copy_only=False, writable=True),
        y=table["y"].combine_chunks().flatten().to_numpy(zero_copy_only=False, writable=True),
        offsets=offsets - offsets[0],
    )


def read_tile_polygons(folder: Path, tile: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(owner cell ids, kinds, shapely polygons in target px) of one tile; empty if the tile has none."""
    rings = read_tile_rings(folder, tile)
    return rings.ids, rings.kinds, rings.polygons()
