"""A boundary table's polygons: vertex rows grouped into polygons, what makes one bad, and every cell problem.

Validation, the tile split and the viewer all read polygons through ``group_polygons`` (one table) or
``iter_polygons`` (streamed), so they cannot disagree about which rows make a polygon. Every reason a cell
is invalid or flagged is a :class:`CellProblem`: each member says whether it disqualifies the cell and which
:class:`SkipReason` patch extraction counts it under, so a new reason cannot fall silently into a catch-all.
The strings are those ``cell_problems.parquet`` has always held.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import shapely

from xenium_assets.bundle.ids import normalise_ids
from xenium_assets.formats import Col

BATCH_ROWS = 1_000_000
Boundary = Literal["cell", "nucleus"]


class SkipReason(StrEnum):
    """Why patch extraction skips a cell, most fundamental first: a cell is counted under the first that applies.
    The names are shown in ``patch_shards``' metadata."""

    OFF_IMAGE = "off_image"
    INVALID_ID = "invalid_id"
    INVALID_POLYGON = "invalid_polygon"
    NO_CELL_BOUNDARY = "no_cell_boundary"
    NO_NUCLEUS = "no_nucleus"
    NOT_IN_MATRIX = "not_in_matrix"


class ProblemKind(StrEnum):
    """The ``kind`` column of cell_problems.parquet: an invalid cell is unusable, a flag is worth knowing."""

    INVALID = "invalid"
    FLAG = "flag"


class PolygonFault(StrEnum):
    """What can be wrong with one polygon (the order validation lists them in)."""

    ROWS_NOT_CONTIGUOUS = "rows_not_contiguous"
    OPEN = "open"
    DEGENERATE = "degenerate"
    NAN_VERTEX = "nan_vertex"
    SELF_INTERSECTING = "self_intersecting"


class CellProblem(StrEnum):
    """A reason in cell_problems.parquet, with its kind and the skip reason it counts under (None: not skipped).

    Members are in the order validation reports them: the invalid reasons, then the flags.
    """

    kind: ProblemKind
    skip: SkipReason | None

    def __new__(cls, value: str, kind: ProblemKind, skip: SkipReason | None) -> CellProblem:
        member = str.__new__(cls, value)
        member._value_ = value
        member.kind = kind
        member.skip = skip
        return member

    DUPLICATE_CELL_ID = "duplicate_cell_id", ProblemKind.INVALID, SkipReason.INVALID_ID
    NOT_IN_MATRIX = "not_in_matrix", ProblemKind.INVALID, SkipReason.NOT_IN_MATRIX
    NO_CELL_BOUNDARY = "no_cell_boundary", ProblemKind.INVALID, SkipReason.NO_CELL_BOUNDARY
    CELL_POLYGON_ROWS_NOT_CONTIGUOUS = (
        "cell_polygon_rows_not_contiguous",
        ProblemKind.INVALID,
        SkipReason.INVALID_POLYGON,
    )
    CELL_POLYGON_OPEN = "cell_polygon_open", ProblemKind.INVALID, SkipReason.INVALID_POLYGON
    CELL_POLYGON_DEGENERATE = "cell_polygon_degenerate", ProblemKind.INVALID, SkipReason.INVALID_POLYGON
    CELL_POLYGON_NAN_VERTEX = "cell_polygon_nan_vertex", ProblemKind.INVALID, SkipReason.INVALID_POLYGON
    CELL_POLYGON_SELF_INTERSECTING = "cell_polygon_self_intersecting", ProblemKind.INVALID, SkipReason.INVALID_POLYGON
    NUCLEUS_POLYGON_ROWS_NOT_CONTIGUOUS = (
        "nucleus_polygon_rows_not_contiguous",
        ProblemKind.INVALID,
        SkipReason.INVALID_POLYGON,
    )
    NUCLEUS_POLYGON_OPEN = "nucleus_polygon_open", ProblemKind.INVALID, SkipReason.INVALID_POLYGON
    NUCLEUS_POLYGON_DEGENERATE = "nucleus_polygon_degenerate", ProblemKind.INVALID, SkipReason.INVALID_POLYGON
    NUCLEUS_POLYGON_NAN_VERTEX = "nucleus_polygon_nan_vertex", ProblemKind.INVALID, SkipReason.INVALID_POLYGON
    NUCLEUS_POLYGON_SELF_INTERSECTING = (
        "nucleus_polygon_self_intersecting",
        ProblemKind.INVALID,
        SkipReason.INVALID_POLYGON,
    )
    CENTROID_OFF_IMAGE = "centroid_off_image", ProblemKind.INVALID, SkipReason.OFF_IMAGE
    # A cell without a nucleus is valid (labels use it) but has no patch centre, so extraction skips it.
    NO_NUCLEUS = "no_nucleus", ProblemKind.FLAG, SkipReason.NO_NUCLEUS
    MULTINUCLEATE = "multinucleate", ProblemKind.FLAG, None
    PARTLY_OFF_IMAGE = "partly_off_image", ProblemKind.FLAG, None

    @classmethod
    def polygon(cls, boundary: Boundary, fault: PolygonFault) -> CellProblem:
        """The problem of a cell whose ``boundary`` polygon has ``fault`` (a ValueError if there is no such member)."""
        return cls(f"{boundary}_polygon_{fault.value}")


SKIP_CODES = {
    problem.value: list(SkipReason).index(problem.skip) for problem in CellProblem if problem.skip is not None
}
"""Each skipping reason's position in SkipReason's order (reasons that skip nothing are absent)."""


def unknown_reasons(reasons: pd.Series | np.ndarray) -> list[str]:
    """The distinct values of ``reasons`` that are not a CellProblem, sorted (a null among them as 'None')."""
    known = {problem.value for problem in CellProblem}
    return sorted(str(v) for v in pd.unique(np.asarray(reasons, dtype=object)) if v not in known)


def skip_codes(reasons: pd.Series, source: str | Path = "cell problems") -> np.ndarray:
    """Each reason's position in SkipReason's order, ``len(SkipReason)`` where it skips nothing (a flag such as
    multinucleate); a ValueError naming ``source`` for a reason that is not a CellProblem."""
    unknown = unknown_reasons(reasons)
    if unknown:
        raise ValueError(f"{source}: {_unknown_message(unknown)}")
    return reasons.map(SKIP_CODES).fillna(len(SkipReason)).to_numpy(dtype=np.int64)


def _unknown_message(unknown: list[str]) -> str:
    return (
        f"unknown cell problem reason(s) {', '.join(map(repr, unknown[:5]))}"
        f"{' ...' if len(unknown) > 5 else ''} (known: {', '.join(p.value for p in CellProblem)}); "
        "re-materialize raw_bundle with this version"
    )


def read_cell_problems(path: str | Path, kind: ProblemKind | None = None) -> pd.DataFrame:
    """raw_bundle's cell_problems.parquet (cell_id, reason, kind), only ``kind`` rows if given; a ValueError
    naming the file if a reason is not a CellProblem (a file from another version), never a silent catch-all."""
    filters = [("kind", "==", kind.value)] if kind is not None else None
    problems = pq.read_table(path, filters=filters).to_pandas()
    unknown = unknown_reasons(problems["reason"])
    if unknown:
        raise ValueError(f"{path}: {_unknown_message(unknown)}")
    return problems


@dataclass
class Polygons:
    """Complete polygons: polygon k is vertex rows ``starts[k]:starts[k] + rows[k]`` of ``x``, ``y`` (µm), owned by
    cell ``ids[k]`` and grouped by ``keys[k]`` (its label_id, else its cell id)."""

    ids: np.ndarray
    x: np.ndarray
    y: np.ndarray
    starts: np.ndarray
    rows: np.ndarray
    keys: pa.Array

    def __len__(self) -> int:
        return len(self.starts)

    def bounds(self) -> np.ndarray:
        """(P, 4) min x, min y, max x, max y of each polygon's vertices, NaN vertices ignored."""
        with np.errstate(invalid="ignore"):
            return np.column_stack(
                [
                    np.fmin.reduceat(self.x, self.starts),
                    np.fmin.reduceat(self.y, self.starts),
                    np.fmax.reduceat(self.x, self.starts),
                    np.fmax.reduceat(self.y, self.starts),
                ]
            )


def _grouping_key(table: pa.Table) -> pa.ChunkedArray:
    """label_id where the table has it (XOA >= 2: a cell may have several nuclei), else cell_id."""
    return table[Col.LABEL_ID] if Col.LABEL_ID in table.column_names else table[Col.CELL_ID]


def polygon_starts(table: pa.Table) -> np.ndarray:
    """First row of each polygon: a polygon is a run of consecutive rows with the same key (nulls equal nulls)."""
    key = _grouping_key(table)
    n = len(key)
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    before, after = key.slice(0, n - 1), key.slice(1)
    change = pc.not_equal(before, after)
    if change.null_count:
        change = pc.if_else(pc.is_valid(change), change, pc.xor(pc.is_null(before), pc.is_null(after)))
    return np.flatnonzero(np.concatenate([[True], change.to_numpy(zero_copy_only=False)]))


def group_polygons(table: pa.Table, starts: np.ndarray | None = None) -> Polygons:
    """The polygons of a table of vertex rows (cell_id, vertex_x, vertex_y, optional label_id), every polygon
    complete; ``starts``: ``polygon_starts(table)`` when already known."""
    starts = polygon_starts(table) if starts is None else starts
    at = pa.array(starts, pa.int64())
    return Polygons(
        ids=normalise_ids(table[Col.CELL_ID].take(at)),
        x=table[Col.VERTEX_X].to_numpy().astype(np.float64),
        y=table[Col.VERTEX_Y].to_numpy().astype(np.float64),
        starts=starts,
        rows=np.diff(np.append(starts, table.num_rows)),
        keys=_grouping_key(table).take(at).combine_chunks(),
    )


def _batches(path: Path) -> Iterator[pa.RecordBatch]:
    columns = [Col.CELL_ID, Col.VERTEX_X, Col.VERTEX_Y]
    if path.name.endswith(".parquet"):
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
        wanted = columns + ([Col.LABEL_ID] if Col.LABEL_ID in names else [])
        yield from parquet.iter_batches(batch_size=BATCH_ROWS, columns=wanted)
    else:
        opts = pacsv.ConvertOptions(column_types={Col.CELL_ID: pa.string()})
        reader = pacsv.open_csv(path, convert_options=opts, read_options=pacsv.ReadOptions(block_size=64 << 20))
        for batch in reader:
            keep = [c for c in [*columns, Col.LABEL_ID] if c in batch.schema.names]
            yield pa.RecordBatch.from_arrays([batch.column(c) for c in keep], names=keep)


def iter_polygons(path: Path) -> Iterator[Polygons]:
    """A boundary table's complete polygons batch by batch (a whole-slide table never sits in memory): the last
    polygon of a batch may continue in the next, so it is carried over."""
    carry: pa.Table | None = None
    batches = _batches(path)
    nxt = next(batches, None)
    while nxt is not None:
        current, nxt = nxt, next(batches, None)
        table = (
            pa.Table.from_batches([current])
            if carry is None
            else pa.concat_tables([carry, pa.Table.from_batches([current])])
        )
        starts = polygon_starts(table)
        cut = starts[-1] if nxt is not None and len(starts) else table.num_rows
        carry = table.slice(cut) if nxt is not None else None
        starts = starts[starts < cut]
        if len(starts):
            yield group_polygons(table.slice(0, cut), starts)


def nan_vertex(polys: Polygons) -> np.ndarray:
    """Per polygon: has a vertex with a NaN coordinate."""
    return np.add.reduceat((np.isnan(polys.x) | np.isnan(polys.y)).astype(np.int64), polys.starts) > 0


def find_faults(polys: Polygons) -> dict[PolygonFault, np.ndarray]:
    """Per fault, which polygons have it (vectorised; the rules validation applies).

    Rows not contiguous: the polygon's key also starts another run of rows. Open: first and last vertex differ.
    Degenerate: fewer than 3 distinct vertices. Self-intersecting: shapely finds the well-formed ring invalid
    (only well-formed rings are tested: GEOS cannot build the others). A NaN vertex is reported as such, not as
    open or degenerate too.
    """
    starts, rows = polys.starts, polys.rows
    x, y = polys.x, polys.y
    ends = starts + rows
    codes = polys.keys.dictionary_encode(null_encoding="encode").indices.to_numpy(zero_copy_only=False)
    repeated_key = np.bincount(codes, minlength=1)[codes] > 1
    nan = nan_vertex(polys)
    closed = (x[starts] == x[ends - 1]) & (y[starts] == y[ends - 1])
    group = np.repeat(np.arange(len(starts)), rows)
    order = np.lexsort((y, x, group))
    go, xo, yo = group[order], x[order], y[order]
    dup = (go[1:] == go[:-1]) & (xo[1:] == xo[:-1]) & (yo[1:] == yo[:-1])
    distinct = rows - np.bincount(go[1:][dup], minlength=len(starts))
    degenerate = distinct < 3
    well_formed = ~(nan | degenerate | ~closed | repeated_key)
    self_intersecting = np.zeros(len(starts), dtype=bool)
    if well_formed.any():
        keep_rows = np.repeat(well_formed, rows)
        coords = np.column_stack([x[keep_rows], y[keep_rows]])
        ring_offsets = np.concatenate([[0], np.cumsum(rows[well_formed])])
        rings = shapely.from_ragged_array(
            shapely.GeometryType.POLYGON, coords, offsets=(ring_offsets, np.arange(well_formed.sum() + 1))
        )
        self_intersecting[well_formed] = ~shapely.is_valid(rings)
    return {
        PolygonFault.ROWS_NOT_CONTIGUOUS: repeated_key,
        PolygonFault.OPEN: ~closed & ~nan,
        PolygonFault.DEGENERATE: degenerate & ~nan,
        PolygonFault.NAN_VERTEX: nan,
        PolygonFault.SELF_INTERSECTING: self_intersecting,
    }


def usable_polygons(polys: Polygons, owner: np.ndarray) -> np.ndarray:
    """Indices of the polygons that can be drawn: a known owner (``owner`` >= 0), >= 4 rows, no NaN vertex.

    Looser than ``find_faults`` on purpose: which cells get a patch is validation's decision (their problems),
    but a neighbour's drawable nucleus still shapes a patch's masks even when that neighbour is skipped.
    """
    return np.flatnonzero((polys.rows >= 4) & ~nan_vertex(polys) & (owner >= 0))
