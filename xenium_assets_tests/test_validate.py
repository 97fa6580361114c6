"""Bundle validation: every version reads; every kind of bad input gets a clear message or is counted."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import tifffile

from xenium_assets.bundle.errors import BundleError
from xenium_assets.bundle.manifest import read_manifest, write_manifest
from xenium_assets.bundle.validate import inspect_bundle
from xenium_assets_tests.conftest import SMALL, VERSIONS


@pytest.mark.parametrize("version", VERSIONS)
def test_every_version_is_valid(bundles, version, tmp_path):
    report = inspect_bundle(bundles(version))
    assert report.n_cells == report.n_valid_cells == SMALL["n_cells"]
    assert report.invalid == {}
    assert report.dapi.channel_name == "DAPI"
    assert report.dapi.levels[0] == (SMALL["height"], SMALL["width"])
    assert report.pixel_size_um == 0.2125 and report.pixel_size_source == "experiment.xenium"
    assert report.version.numbers[0] == int(float(version))
    assert report.id_kind == {"1": "integer", "1.7": "binary"}.get(version, "string")
    assert report.problems == []
    manifest = write_manifest(report, "s", tmp_path)
    again = read_manifest(tmp_path)
    assert again == manifest and again.dapi_path.exists() and again.path("cells").exists()


def _message(bundle, **kwargs) -> str:
    with pytest.raises(BundleError) as err:
        inspect_bundle(bundle, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_missing_file(bundle_copy):
    bundle = bundle_copy()
    (bundle / "cells.parquet").unlink()
    assert (
        _message(bundle) == f"{bundle / 'cells.parquet'}: missing (cell table); copy the complete Xenium output folder"
    )


def test_missing_matrix_and_image(bundle_copy):
    bundle = bundle_copy()
    (bundle / "cell_feature_matrix.h5").unlink()
    shutil.rmtree(bundle / "cell_feature_matrix")
    (bundle / "cell_feature_matrix.zarr.zip").unlink()
    assert "cell_feature_matrix.h5: missing (cell-feature matrix; no MTX folder or Zarr either)" in _message(bundle)
    bundle = bundle_copy("1")
    (bundle / "morphology_focus.ome.tif").unlink()
    assert "missing morphology image" in _message(bundle)


def test_mtx_is_used_without_h5(bundle_copy):
    bundle = bundle_copy()
    (bundle / "cell_feature_matrix.h5").unlink()
    report = inspect_bundle(bundle)
    assert report.files.matrix_format == "mtx" and report.n_valid_cells == SMALL["n_cells"]


def test_corrupt_parquet(bundle_copy):
    bundle = bundle_copy()
    path = bundle / "cell_boundaries.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert _message(bundle).startswith(f"{path}: corrupt Parquet")


def test_corrupt_transcripts_are_reported_and_min_qv_refused(bundle_copy, tmp_path):
    """The transcripts and cells.zarr.zip are not needed for labels and patches: reported, not fatal."""
    from xenium_assets.expression.matrix import read_expression

    bundle = bundle_copy()
    transcripts, zarr_zip = bundle / "transcripts.parquet", bundle / "cells.zarr.zip"
    transcripts.write_bytes(transcripts.read_bytes()[:1000])
    zarr_zip.write_bytes(b"not a zip")
    report = inspect_bundle(bundle)
    assert any(p.startswith(f"{transcripts}: unreadable") for p in report.problems), report.problems
    assert f"{zarr_zip}: not a zip file; re-copy it from the instrument output" in report.problems
    manifest = write_manifest(report, "s", tmp_path)
    assert len(read_expression(manifest)) > 0  # the matrix still reads
    with pytest.raises(BundleError, match=f"^{transcripts}: corrupt Parquet .*unset min_qv$"):
        read_expression(manifest, min_qv=30)


def test_corrupt_hdf5(bundle_copy):
    bundle = bundle_copy()
    path = bundle / "cell_feature_matrix.h5"
    path.write_bytes(b"not an hdf5 file" * 100)
    assert _message(bundle).startswith(f"{path}: corrupt HDF5")


def test_corrupt_tiff(bundle_copy):
    bundle = bundle_copy()
    path = bundle / "morphology_focus" / "morphology_focus_0000.ome.tif"
    path.write_bytes(path.read_bytes()[:4096])
    msg = _message(bundle)
    assert msg.startswith(str(path)) and ("not a readable TIFF" in msg or "cannot read the image" in msg)


def test_no_dapi_channel(bundle_copy):
    bundle = bundle_copy()
    path = bundle / "morphology_focus" / "morphology_focus_0000.ome.tif"
    tifffile.tiffcomment(path, tifffile.tiffcomment(path).replace('Name="DAPI"', 'Name="CD45"'))
    msg = _message(bundle)
    assert msg.startswith(f"{path}: no channel named DAPI (channels: 'CD45', 'ATP1A1/CD45/E-Cadherin'")


def test_dapi_found_by_name_not_position(bundle_copy):
    """Swap the channel names of files 0 and 2: DAPI must then be read from file 0002."""
    bundle = bundle_copy()
    path = bundle / "morphology_focus" / "morphology_focus_0000.ome.tif"
    xml = tifffile.tiffcomment(path)
    xml = xml.replace('Name="DAPI"', 'Name="@"').replace('Name="18S"', 'Name="DAPI"').replace('Name="@"', 'Name="18S"')
    tifffile.tiffcomment(path, xml)
    report = inspect_bundle(bundle)
    assert report.dapi.file.name == "morphology_focus_0002.ome.tif" and report.dapi.channel_index == 2


def test_unnamed_single_channel_is_dapi_with_a_note(bundle_copy):
    bundle = bundle_copy("1")
    path = bundle / "morphology_focus.ome.tif"
    tifffile.tiffcomment(path, tifffile.tiffcomment(path).replace(' Name="DAPI"', ""))
    report = inspect_bundle(bundle)
    assert report.dapi.channel_index == 0
    assert any("names no channel" in p for p in report.problems)


def test_empty_bundle(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "empty bundle: no Xenium output files in it" in _message(tmp_path / "empty")
    assert "not a folder" in _message(tmp_path / "nowhere")


def test_mismatched_cell_ids(bundles, bundle_copy):
    bundle = bundle_copy()
    other = bundles("3", seed=99)
    shutil.copy(other / "cell_feature_matrix.h5", bundle / "cell_feature_matrix.h5")
    msg = _message(bundle)
    assert msg.startswith(f"{bundle / 'cell_feature_matrix.h5'}: cell ids do not match cells.parquet")


def test_bad_experiment_json(bundle_copy):
    bundle = bundle_copy()
    (bundle / "experiment.xenium").write_text("{not json")
    assert "experiment.xenium: not valid JSON" in _message(bundle)


def _rewrite(path, fn) -> None:
    table = pq.read_table(path)
    pq.write_table(fn(table), path)


def test_invalid_polygons_are_counted_not_dropped(bundle_copy):
    bundle = bundle_copy("1")
    path = bundle / "cell_boundaries.parquet"
    table = pq.read_table(path)
    x = table["vertex_x"].to_numpy().copy()
    y = table["vertex_y"].to_numpy().copy()
    # Polygons are 13 rows each. Cell 0: all vertices equal (degenerate). Cell 1: last vertex moved (open).
    # Cell 2: two vertices swapped (self-intersecting bow-tie). Cell 3: a NaN vertex.
    x[0:13] = x[0]
    y[0:13] = y[0]
    x[25] += 1.0
    x[27], x[32] = x[32], x[27]
    y[27], y[32] = y[32], y[27]
    x[40] = np.nan
    table = table.set_column(1, "vertex_x", pa.array(x, pa.float32())).set_column(
        2, "vertex_y", pa.array(y, pa.float32())
    )
    pq.write_table(table, path)
    report = inspect_bundle(bundle)
    assert report.invalid == {
        "cell_polygon_open": 1,
        "cell_polygon_degenerate": 1,
        "cell_polygon_nan_vertex": 1,
        "cell_polygon_self_intersecting": 1,
    }
    assert report.n_valid_cells == SMALL["n_cells"] - 4
    bad = report.cell_problems.filter(pc.equal(report.cell_problems["kind"], "invalid"))
    assert sorted(bad["cell_id"].to_pylist()) == ["1", "2", "3", "4"]


def test_missing_and_split_polygons(bundle_copy):
    bundle = bundle_copy("3")
    path = bundle / "cell_boundaries.parquet"
    table = pq.read_table(path)
    # Drop the first cell's polygon; move the third's first 5 rows to the end (non-contiguous rows).
    idx = np.r_[13:26, 31 : len(table), 26:31]
    pq.write_table(table.take(idx), path)
    report = inspect_bundle(bundle)
    assert report.invalid["no_cell_boundary"] == 1
    assert report.invalid["cell_polygon_rows_not_contiguous"] == 1


def test_cells_off_the_image(bundle_copy):
    bundle = bundle_copy()
    path = bundle / "cells.parquet"
    table = pq.read_table(path)
    x = table["x_centroid"].to_numpy().copy()
    x[:7] = -50.0
    x[7:10] = SMALL["width"] * 0.2125 + 10
    pq.write_table(table.set_column(1, "x_centroid", pa.array(x)), path)
    report = inspect_bundle(bundle)
    assert report.invalid == {"centroid_off_image": 10}
    x[:] = -50.0
    pq.write_table(table.set_column(1, "x_centroid", pa.array(x)), path)
    assert "no cell centroid lies on the DAPI image" in _message(bundle)


def test_pixel_size_mismatch_is_reported_and_config_overrides(bundle_copy):
    bundle = bundle_copy()
    spec = json.loads((bundle / "experiment.xenium").read_text())
    spec["pixel_size"] = 0.2
    (bundle / "experiment.xenium").write_text(json.dumps(spec))
    report = inspect_bundle(bundle)
    assert report.pixel_size_um == 0.2
    assert any("pixel size mismatch: experiment.xenium says 0.2 µm" in p and "0.2125 µm" in p for p in report.problems)
    report = inspect_bundle(bundle, pixel_size_um=0.2125)
    assert report.pixel_size_um == 0.2125 and report.pixel_size_source == "config"
    assert any("the configured value is used" in p for p in report.problems)


@pytest.mark.parametrize("value", [0, "0.2125um", -0.2, None], ids=["zero", "text", "negative", "null"])
def test_unusable_pixel_size_falls_back_to_ome_and_is_listed(bundle_copy, value):
    bundle = bundle_copy()
    spec = json.loads((bundle / "experiment.xenium").read_text())
    spec["pixel_size"] = value
    (bundle / "experiment.xenium").write_text(json.dumps(spec))
    report = inspect_bundle(bundle)
    assert report.pixel_size_um == pytest.approx(0.2125) and report.pixel_size_source == "ome"
    listed = [p for p in report.problems if "pixel_size" in p and "is not a positive number" in p]
    assert len(listed) == (value is not None), report.problems  # a JSON null is an absent value, not a bad one
    if listed:
        assert f"pixel_size {value!r}" in listed[0] and "experiment.xenium" in listed[0] and "µm is used" in listed[0]


def test_unparseable_version_reads_the_layout(bundle_copy):
    bundle = bundle_copy("4")
    spec = json.loads((bundle / "experiment.xenium").read_text())
    spec["analysis_sw_version"] = "R&D"
    (bundle / "experiment.xenium").write_text(json.dumps(spec))
    report = inspect_bundle(bundle)
    assert report.version.numbers is None and report.files.image_layout == "v4"
    assert report.dapi.file.name == "ch0000_dapi.ome.tif"
    assert any("unparseable XOA version 'R&D'" in p for p in report.problems)


def test_xenium_ranger_version_wins(bundle_copy):
    bundle = bundle_copy("3")
    spec = json.loads((bundle / "experiment.xenium").read_text())
    spec["xenium_ranger"] = {"version": "xenium-3.1.0.5"}
    (bundle / "experiment.xenium").write_text(json.dumps(spec))
    assert inspect_bundle(bundle).version.numbers == (3, 1, 0)
