"""One polygon module: vertex rows grouped one way everywhere, each fault its reason, each reason its skip group."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from xenium_assets.bundle import polygons
from xenium_assets.bundle.polygons import (
    CellProblem,
    PolygonFault,
    ProblemKind,
    SkipReason,
    find_faults,
    group_polygons,
    iter_polygons,
    read_cell_problems,
    skip_codes,
    usable_polygons,
)
from xenium_assets.bundle.validate import FLAG_REASONS, INVALID_REASONS, inspect_bundle
from xenium_assets.patches.extract import SKIP_ORDER, plan_cells

# What cell_problems.parquet files already on disk hold, and what patch_shards' metadata shows: a contract.
FILE_REASONS = {
    "duplicate_cell_id": ("invalid", "invalid_id"),
    "not_in_matrix": ("invalid", "not_in_matrix"),
    "no_cell_boundary": ("invalid", "no_cell_boundary"),
    **{
        f"{boundary}_polygon_{fault}": ("invalid", "invalid_polygon")
        for boundary in ("cell", "nucleus")
        for fault in ("rows_not_contiguous", "open", "degenerate", "nan_vertex", "self_intersecting")
    },
    "centroid_off_image": ("invalid", "off_image"),
    "no_nucleus": ("flag", "no_nucleus"),
    "multinucleate": ("flag", None),
    "partly_off_image": ("flag", None),
}
SKIP_NAMES = ("off_image", "invalid_id", "invalid_polygon", "no_cell_boundary", "no_nucleus", "not_in_matrix")

SQUARE = [(0, 0), (4, 0), (4, 4), (0, 4), (0, 0)]


def _table(rings: list[tuple[str, list[tuple[float, float]]]], label_ids: list[int] | None = None) -> pa.Table:
    """A boundary table: one run of rows per (cell id, vertices) ring, with a label_id per ring if given."""
    cols = {
        "cell_id": pa.array([cid for cid, ring in rings for _ in ring], pa.string()),
        "vertex_x": pa.array([float(x) for _, ring in rings for x, _ in ring], pa.float32()),
        "vertex_y": pa.array([float(y) for _, ring in rings for _, y in ring], pa.float32()),
    }
    if label_ids is not None:
        cols["label_id"] = pa.array([lab for lab, (_, ring) in zip(label_ids, rings, strict=True) for _ in ring])
    return pa.table(cols)


def _shifted(ring, dx: float) -> list[tuple[float, float]]:
    return [(x + dx, y) for x, y in ring]


def test_rows_group_by_label_id_else_cell_id():
    rings = [("a", SQUARE), ("b", _shifted(SQUARE, 10)), ("b", _shifted(SQUARE, 20)), ("c", _shifted(SQUARE, 30))]
    by_cell = group_polygons(_table(rings))  # without label_id, b's two rings are one run of rows
    assert by_cell.ids.tolist() == ["a", "b", "c"]
    assert by_cell.starts.tolist() == [0, 5, 15] and by_cell.rows.tolist() == [5, 10, 5]
    by_label = group_polygons(_table(rings, label_ids=[1, 2, 3, 4]))  # with it, b has two nuclei
    assert by_label.ids.tolist() == ["a", "b", "b", "c"] and by_label.rows.tolist() == [5, 5, 5, 5]
    assert by_label.keys.to_pylist() == [1, 2, 3, 4]
    np.testing.assert_array_equal(by_label.bounds()[1], [10, 0, 14, 4])


def test_binary_ids_are_normalised_and_null_keys_group_together():
    table = _table([("a", SQUARE), ("b", SQUARE)])
    binary = table.set_column(0, "cell_id", table["cell_id"].cast(pa.binary()))
    assert group_polygons(binary).ids.tolist() == ["a", "b"]
    keys = pa.array([None] * 5 + [7] * 5 + [None] * 5, pa.int64())
    with_nulls = _table([("a", SQUARE), ("b", SQUARE), ("c", SQUARE)]).append_column("label_id", keys)
    assert group_polygons(with_nulls).starts.tolist() == [0, 5, 10]


@pytest.mark.parametrize("suffix", [".parquet", ".csv.gz"])
def test_streamed_polygons_are_the_whole_tables_across_batch_cuts(tmp_path, monkeypatch, suffix):
    """A polygon cut by a batch boundary is carried into the next batch, whatever the batch size."""
    rng = np.random.default_rng(0)
    rings = [(f"c{i}", _shifted(SQUARE[:-1] * int(rng.integers(1, 4)) + [(0, 0)], i)) for i in range(40)]
    table = _table(rings)
    path = tmp_path / f"cell_boundaries{suffix}"
    if suffix == ".parquet":
        pq.write_table(table, path)
    else:
        with pa.CompressedOutputStream(str(path), "gzip") as out:
            pacsv.write_csv(table, out)
    whole = group_polygons(table)
    for batch_rows in (1, 7, 13, 1000):
        monkeypatch.setattr(polygons, "BATCH_ROWS", batch_rows)
        streamed = list(iter_polygons(path))
        assert np.concatenate([b.ids for b in streamed]).tolist() == whole.ids.tolist()
        assert np.concatenate([b.rows for b in streamed]).tolist() == whole.rows.tolist()
        np.testing.assert_array_equal(np.concatenate([b.x for b in streamed]), whole.x)


def test_each_rule_finds_its_fault_and_names_its_reason():
    bow_tie = [(0, 0), (4, 4), (4, 0), (0, 4), (0, 0)]
    rings = [
        ("good", SQUARE),
        ("open", SQUARE[:-1]),
        ("degenerate", [(1, 1), (1, 1), (2, 2), (1, 1)]),
        ("nan", [(0, 0), (4, 0), (np.nan, 4), (0, 4), (0, 0)]),
        ("bow_tie", bow_tie),
        ("split", SQUARE[:3]),
        ("after", _shifted(SQUARE, 10)),
        ("split", SQUARE[3:]),
    ]
    polys = group_polygons(_table(rings))
    faults = find_faults(polys)
    assert list(faults) == list(PolygonFault)
    found = {fault: polys.ids[mask].tolist() for fault, mask in faults.items()}
    assert found == {
        PolygonFault.ROWS_NOT_CONTIGUOUS: ["split", "split"],
        PolygonFault.OPEN: ["open", "split", "split"],
        PolygonFault.DEGENERATE: ["degenerate", "split"],
        PolygonFault.NAN_VERTEX: ["nan"],
        PolygonFault.SELF_INTERSECTING: ["bow_tie"],
    }
    for boundary in ("cell", "nucleus"):
        for fault in PolygonFault:
            problem = CellProblem.polygon(boundary, fault)
            assert problem == f"{boundary}_polygon_{fault}"
            assert problem.kind is ProblemKind.INVALID and problem.skip is SkipReason.INVALID_POLYGON
    # Drawable is looser: at least 4 rows, no NaN, a known owner (validation decides which cells get a patch).
    owner = np.where(polys.ids == "after", -1, 0)
    assert polys.ids[usable_polygons(polys, owner)].tolist() == ["good", "open", "degenerate", "bow_tie"]


def test_every_reason_has_a_kind_and_a_skip_group_with_no_catch_all():
    assert {p.value: (p.kind.value, p.skip and p.skip.value) for p in CellProblem} == FILE_REASONS
    assert all(p.skip is not None for p in CellProblem if p.kind is ProblemKind.INVALID)
    assert tuple(CellProblem) == INVALID_REASONS + FLAG_REASONS
    assert SKIP_ORDER == SKIP_NAMES == tuple(SkipReason)
    codes = skip_codes(pd.Series([p.value for p in CellProblem]))
    expected = [SKIP_NAMES.index(p.skip) if p.skip else len(SKIP_NAMES) for p in CellProblem]
    assert codes.tolist() == expected


def _cells(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "cell_id": [f"c{i}" for i in range(n)],
            "tile": "A1",
            "row_px": 10.0,
            "col_px": 10.0,
            "cell_area_um2": 50.0,
            "n_nuclei": 1,
        }
    )


def test_plan_cells_counts_each_problem_under_its_own_skip_reason():
    members = list(CellProblem)
    cells = _cells(len(members) + 1)
    problems = pd.DataFrame({"cell_id": cells["cell_id"][: len(members)], "reason": [p.value for p in members]})
    eligible, skipped = plan_cells(cells, problems, (100, 100))
    expected = pd.Series([p.skip.value for p in members if p.skip]).value_counts().to_dict()
    assert skipped == {"A1": expected}
    kept = {"multinucleate", "partly_off_image"}  # flags that disqualify nothing
    assert sorted(eligible["cell_id"]) == sorted(
        [f"c{members.index(CellProblem(k))}" for k in kept] + [f"c{len(members)}"]
    )
    # The first skip reason in priority order wins when a cell has several.
    both = pd.DataFrame({"cell_id": ["c0", "c0"], "reason": ["not_in_matrix", "cell_polygon_open"]})
    assert plan_cells(_cells(1), both, (100, 100))[1] == {"A1": {"invalid_polygon": 1}}


def test_an_unknown_reason_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "cell_problems.parquet"
    table = pa.table(
        {
            "cell_id": ["c0", "c1", "c2"],
            "reason": ["cell_polygon_open", "cell_polygon_wobbly", "multinucleate"],
            "kind": ["invalid", "invalid", "flag"],
        }
    )
    pq.write_table(table, path)
    with pytest.raises(ValueError, match=rf"^{path}: unknown cell problem reason\(s\) 'cell_polygon_wobbly' "):
        read_cell_problems(path)
    with pytest.raises(ValueError, match="'cell_polygon_wobbly'"):
        plan_cells(_cells(3), table.to_pandas(), (100, 100))
    pq.write_table(pa.concat_tables([table.slice(0, 1), table.slice(2)]), path)
    assert read_cell_problems(path, ProblemKind.FLAG)["reason"].tolist() == ["multinucleate"]
    assert read_cell_problems(path)["reason"].tolist() == ["cell_polygon_open", "multinucleate"]


def test_nucleus_faults_reach_cell_problems_under_their_enum_strings(bundle_copy):
    """End to end on a v3 bundle (label_id present): each broken nucleus gives its cell the reason the enum names."""
    bundle = bundle_copy("3")
    path = bundle / "nucleus_boundaries.parquet"
    table = pq.read_table(path)
    polys = group_polygons(table)
    x, y = table["vertex_x"].to_numpy().copy(), table["vertex_y"].to_numpy().copy()
    single = np.flatnonzero(~pd.Series(polys.ids).duplicated(keep=False).to_numpy())[:4]  # one-nucleus cells
    s, r = polys.starts[single], polys.rows[single]
    x[s[0] : s[0] + r[0]] = x[s[0]]  # degenerate
    y[s[0] : s[0] + r[0]] = y[s[0]]
    x[s[1] + r[1] - 1] += 1.0  # open
    x[s[2] + 1] = np.nan  # NaN vertex
    a, b = s[3] + 1, s[3] + 6  # swapped vertices: a bow-tie
    x[a], x[b], y[a], y[b] = x[b], x[a], y[b], y[a]
    table = table.set_column(table.column_names.index("vertex_x"), "vertex_x", pa.array(x, pa.float32()))
    table = table.set_column(table.column_names.index("vertex_y"), "vertex_y", pa.array(y, pa.float32()))
    pq.write_table(table, path)
    report = inspect_bundle(bundle)
    invalid = report.cell_problems.filter(pc.equal(report.cell_problems["kind"], "invalid")).to_pandas()
    by_cell = dict(zip(invalid["cell_id"], invalid["reason"], strict=True))
    assert [by_cell[polys.ids[k]] for k in single] == [
        CellProblem.NUCLEUS_POLYGON_DEGENERATE,
        CellProblem.NUCLEUS_POLYGON_OPEN,
        CellProblem.NUCLEUS_POLYGON_NAN_VERTEX,
        CellProblem.NUCLEUS_POLYGON_SELF_INTERSECTING,
    ]
    assert all(type(v) is str for v in invalid["reason"])  # plain strings on disk, as before
    assert set(report.cell_problems["kind"].to_pylist()) == {"invalid", "flag"}
