"""The Dagster code location loads, and raw_bundle materializes against a real instance."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from dagster import AssetKey, DagsterInstance, Definitions, materialize

from xenium_assets.bundle.manifest import read_manifest
from xenium_assets.defs.cell_labels import cell_labels
from xenium_assets.defs.compute import DaskResource, PatchGeometry
from xenium_assets.defs.dapi_zarr import dapi_zarr
from xenium_assets.defs.label_reference import label_reference
from xenium_assets.defs.partitions import IMAGES, SAMPLES
from xenium_assets.defs.qc_adata import qc_adata
from xenium_assets.defs.raw_bundle import raw_bundle
from xenium_assets.defs.resources import ProjectResource
from xenium_assets.defs.tile_geometry import tile_geometry
from xenium_assets.registry import SampleRegistry
from xenium_assets_tests.conftest import (
    JURKAT,
    JURKAT_ORIGIN,
    JURKAT_PIXEL_SIZE,
    REPO,
    assert_leaves_unloaded,
    needs_shared,
)

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def test_definitions_load():
    from xenium_assets.definitions import defs

    Definitions.validate_loadable(defs)
    # The asset graph, deliberately: changing it should change this line. tile_geometry needs only the bundle,
    # so a sample's DAPI transcode and polygon split run side by side.
    graph = {
        spec.key.to_user_string(): (
            spec.group_name,
            getattr(spec.partitions_def, "name", None),
            sorted(dep.asset_key.to_user_string() for dep in spec.deps),
        )
        for spec in defs.resolve_all_asset_specs()
    }
    assert graph == {
        "raw_bundle": ("bundle", SAMPLES, []),
        "qc_adata": ("expression", SAMPLES, ["raw_bundle"]),
        "label_reference": ("labels", None, ["qc_adata"]),
        "cell_labels": ("labels", SAMPLES, ["label_reference", "qc_adata"]),
        "dapi_zarr": ("patches", SAMPLES, ["raw_bundle"]),
        "tile_geometry": ("patches", SAMPLES, ["raw_bundle"]),
        "patch_shards": ("patches", None, ["dapi_zarr", "tile_geometry"]),  # pixels never depend on labels
        "trained_model": ("model", None, ["cell_labels", "patch_shards"]),
        "evaluation_report": ("model", None, ["trained_model"]),
        "nucleus_segmenter": ("model", None, ["trained_model"]),  # trains on the classifier's training tiles
        "cell_predictions": ("prediction", IMAGES, ["nucleus_segmenter", "trained_model"]),  # per DAPI-only image
    }
    tiles = defs.resolve_assets_def("patch_shards").partitions_def
    assert [d.name for d in tiles.partitions_defs] == ["sample", "tile"]


def test_dagster_cli_validates_the_code_location():
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}  # as a user would run it, anywhere
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "xenium_assets" in result.stdout + result.stderr


def test_loading_the_code_location_leaves_mlflow_and_torch_unloaded():
    # Every Dagster process (webserver, daemon, each run and step) loads the code location: mlflow alone added 2 s,
    # scipy.ndimage (only resampling needs it) and rasterio (the generator and the viewer) 0.4-0.7 s together.
    unwanted = ("mlflow", "dagster_mlflow", "torch", "lightning", "timm", "scipy.ndimage", "rasterio")
    assert_leaves_unloaded(("xenium_assets.definitions",), unwanted)


def _register(data, bundle, key, **kwargs):
    SampleRegistry(data / "samples").register(bundle, key, **kwargs)
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions(SAMPLES, [key])
    return instance


def _resources(data) -> dict:
    return {"project": ProjectResource(data_dir=str(data)), "dask": DaskResource(), "patches": PatchGeometry()}


def _materialize(instance, data, key, run_config=None, raise_on_error=True, assets=(raw_bundle,)):
    config = {**QUIET, **(run_config or {})}
    return materialize(
        list(assets),
        partition_key=key,
        instance=instance,
        run_config=config,
        resources=_resources(data),
        raise_on_error=raise_on_error,
    )


def test_raw_bundle_materializes(project, bundles):
    instance = _register(project, bundles("2"), "s1")
    result = _materialize(instance, project, "s1")
    assert result.success
    event = instance.get_latest_materialization_event(AssetKey("raw_bundle"))
    meta = event.asset_materialization.metadata
    manifest_path = project / "samples" / "s1" / "raw_bundle" / "manifest.json"
    assert meta["path"].value == str(manifest_path)
    assert meta["xoa_version"].value == "2.0.0"
    assert meta["pixel_size_um"].value == 0.2125
    assert meta["image_size"].value == "1536 x 1536 px"
    assert meta["n_cells"].value == 600 and meta["n_valid_cells"].value == 600
    assert meta["n_genes"].value == 24 + 8 and meta["n_controls"].value == 16
    assert "no_nucleus" in meta["flagged_cells"].value
    manifest = read_manifest(manifest_path)
    assert manifest.sample == "s1" and manifest.dapi.file == "morphology_focus/morphology_focus_0000.ome.tif"
    assert event.asset_materialization.tags["dagster/data_version"] == manifest.fingerprint
    before = manifest_path.read_text()
    assert _materialize(instance, project, "s1").success  # idempotent
    assert manifest_path.read_text() == before
    instance.dispose()


@needs_shared
def test_raw_bundle_config_overrides_pixel_size(project):
    instance = _register(project, JURKAT, "jurkat", image_origin_um=JURKAT_ORIGIN)
    result = _materialize(instance, project, "jurkat", raise_on_error=False)
    assert not result.success  # the registry has no pixel size and the bundle records none
    config = {"ops": {"raw_bundle": {"config": {"pixel_size_um": JURKAT_PIXEL_SIZE}}}}
    assert _materialize(instance, project, "jurkat", run_config=config).success
    assert read_manifest(project / "samples" / "jurkat" / "raw_bundle").pixel_size_source == "config"
    instance.dispose()


@pytest.mark.parametrize("broken", ["missing", "unregistered"])
def test_raw_bundle_failure_says_why(project, bundle_copy, broken):
    if broken == "missing":
        bundle = bundle_copy()
        instance = _register(project, bundle, "bad")
        (bundle / "cell_boundaries.parquet").unlink()
        expected = "cell_boundaries.parquet: missing (cell boundaries)"
    else:
        instance = DagsterInstance.get()
        instance.add_dynamic_partitions(SAMPLES, ["bad"])
        expected = "sample 'bad' is not registered"
    result = _materialize(instance, project, "bad", raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert expected in failure.step_failure_data.error.message
    instance.dispose()


def _meta(instance, key):
    return instance.get_latest_materialization_event(AssetKey(key)).asset_materialization.metadata


def test_qc_reference_and_per_sample_labels(project, bundles):
    """Two samples' QC, a reference built from them, each placed in it; a third sample added later is labelled on
    its own, leaving the others' labels as they were; a new reference is a new version beside the old."""
    import pyarrow.parquet as pq

    from xenium_assets.defs.checks import label_classes_above_minimum, qc_pass_fraction

    instance = _register(project, bundles("3", expression_shift=1.0), "s1")
    _register(project, bundles("4", seed=8, expression_shift=1.0), "s2")
    for key in ("s1", "s2"):
        result = _materialize(instance, project, key, assets=(raw_bundle, qc_adata, qc_pass_fraction))
        assert result.success
        (check,) = result.get_asset_check_evaluations()
        assert check.check_name == "qc_pass_fraction" and check.passed and check.partition == key
    qc = _meta(instance, "qc_adata")
    assert qc["n_cells_in"].value == 600 and 500 < qc["n_cells_out"].value < 600
    assert "min_transcripts" in qc["removed_by_reason"].value and "Genomic Control" in qc["control_features"].value
    assert qc["qc_plot"].value.startswith("![QC histograms](data:image/png;base64,")
    assert (project / "samples" / "s2" / "qc_adata" / "adata.h5ad").exists()

    result = _materialize(instance, project, None, assets=(label_reference, label_classes_above_minimum))
    assert result.success and result.get_asset_check_evaluations()[0].passed
    ref = _meta(instance, "label_reference")
    version = ref["label_version"].value
    assert ref["path"].value == str(project / "labels" / "reference" / version)
    assert (
        ref["n_classes"].value == 4
        and ref["samples"].value == "s1, s2"
        and ref["integration"].value.startswith("Harmony")
    )
    assert "| label | s1 | s2 |" in ref["class_cells_per_sample"].value
    assert ref["umap"].value.startswith("![UMAP by label and sample](data:image/png;base64,")
    assert ref["same_sample_neighbours_integrated"].value < ref["same_sample_neighbours_raw"].value

    labels = {}
    for key in ("s1", "s2"):
        assert _materialize(instance, project, key, assets=(cell_labels,)).success
        meta = _meta(instance, "cell_labels")
        path = project / "samples" / key / "cell_labels" / f"{version}.parquet"
        assert meta["path"].value == str(path) and meta["label_version"].value == version
        assert meta["n_classes"].value == 4 and meta["overview"].value.startswith(f"![{key} by label](data:image/png")
        labels[key] = pq.read_table(path).to_pandas()
        assert list(labels[key].columns) == [
            "sample",
            "cell_id",
            "label",
            "confidence",
            "excluded_reason",
            "label_version",
        ]
        assert (labels[key]["sample"] == key).all() and (labels[key]["label_version"] == version).all()
    assert set(labels["s1"]["label"]) == set(labels["s2"]["label"])  # one set of names for both samples

    _register(project, bundles("2", seed=9, expression_shift=1.0), "s3")
    before = {k: (project / "samples" / k / "cell_labels" / f"{version}.parquet").stat().st_mtime_ns for k in labels}
    assert _materialize(instance, project, "s3", assets=(raw_bundle, qc_adata, cell_labels)).success
    s3 = pq.read_table(project / "samples" / "s3" / "cell_labels" / f"{version}.parquet").to_pandas()
    assert set(s3["label"]) - {"Unassigned"} <= set(labels["s1"]["label"])
    after = {k: (project / "samples" / k / "cell_labels" / f"{version}.parquet").stat().st_mtime_ns for k in labels}
    assert after == before and _meta(instance, "label_reference")["label_version"].value == version

    config = {"ops": {"label_reference": {"config": {"resolution": 0.8}}}}
    assert _materialize(instance, project, None, assets=(label_reference,), run_config=config).success
    newer = _meta(instance, "label_reference")["label_version"].value
    assert newer != version  # parameters are part of the version, and the old reference stays
    assert {p.name for p in (project / "labels" / "reference").iterdir() if p.is_dir()} == {version, newer}
    instance.dispose()


def test_label_failures_say_why(project, bundles):
    instance = _register(project, bundles("3"), "s1")
    assert _materialize(instance, project, "s1").success
    config = {"ops": {"qc_adata": {"config": {"min_transcripts": 1000000}}}}
    result = _materialize(instance, project, "s1", run_config=config, raise_on_error=False, assets=(qc_adata,))
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "no cell passes QC (600 cells in; failing min_transcripts: 600" in failure.step_failure_data.error.message
    assert _materialize(instance, project, "s1", assets=(qc_adata,)).success
    # A project of an earlier version: one label table of all samples, no reference.
    (project / "labels").mkdir()
    (project / "labels" / "labels.parquet").write_bytes(b"old")
    result = _materialize(instance, project, "s1", raise_on_error=False, assets=(cell_labels,))
    message = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE").step_failure_data.error.message
    assert "no label reference yet: materialize label_reference" in message and "no longer read" in message
    config = {"ops": {"label_reference": {"config": {"method": "markers"}}}}
    result = _materialize(instance, project, None, run_config=config, raise_on_error=False, assets=(label_reference,))
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "method 'markers' needs markers_file" in failure.step_failure_data.error.message
    config = {"ops": {"label_reference": {"config": {"samples": ["s1", "ghost"]}}}}
    result = _materialize(instance, project, None, run_config=config, raise_on_error=False, assets=(label_reference,))
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "samples ghost have no qc_adata" in failure.step_failure_data.error.message
    instance.dispose()


def test_patch_shards_for_all_tiles_of_a_sample_in_one_run(project, bundles):
    """The sample's image assets, then every tile of the sample in one run on a real 2-process dask cluster."""
    from xenium_assets.definitions import PATCH_SHARDS_JOB, build_definitions
    from xenium_assets.defs.patch_shards import patch_shards
    from xenium_assets.patches.grid import TILE_KEYS

    instance = _register(project, bundles("2"), "s1")
    per_sample = (raw_bundle, dapi_zarr, tile_geometry)  # no expression, no labels: pixels never depend on them
    assert _materialize(instance, project, "s1", assets=per_sample).success
    store = _meta(instance, "dapi_zarr")
    assert store["image_size"].value == "1536 x 1536 px" and store["resampled"].value is False
    assert _meta(instance, "tile_geometry")["n_cells"].value == 600
    job = build_definitions(project).resolve_job_def(PATCH_SHARDS_JOB)
    tags = {"dagster/asset_partition_range_start": "s1|r0c0", "dagster/asset_partition_range_end": "s1|r7c7"}
    result = job.execute_in_process(instance=instance, tags=tags, run_config=QUIET)
    assert result.success
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "shards_match_index" and check.passed, check.metadata
    done = instance.get_materialized_partitions(AssetKey("patch_shards"))
    assert done == {f"s1|{t}" for t in TILE_KEYS}
    assert len(list((project / "samples" / "s1" / "patch_shards").glob("*/index.parquet"))) == 64
    _each_tile_shows_its_own_numbers(instance, project)
    assert patch_shards.backfill_policy is not None
    instance.dispose()
    _check_finds_a_broken_shard(project)


def _each_tile_shows_its_own_numbers(instance, project) -> None:
    """Every tile partition carries its own tile's numbers; the sample's totals and gallery are on one partition."""
    import pyarrow.parquet as pq
    from dagster import AssetRecordsFilter

    from xenium_assets.patches.grid import TILE_KEYS

    records = instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey("patch_shards")), limit=1000)
    meta = {r.partition_key: r.asset_materialization.metadata for r in records.records}
    assert len(meta) == 64
    folder = project / "samples" / "s1" / "patch_shards"
    for tile in TILE_KEYS:
        tile_meta = meta[f"s1|{tile}"]
        assert tile_meta["path"].value == str(folder / tile)
        assert tile_meta["n_patches"].value == pq.read_metadata(folder / tile / "index.parquet").num_rows
    per_tile = [m["n_patches"].value for m in meta.values()]
    assert len(set(per_tile)) > 1  # not one number repeated over the sample's tiles
    totals = [m for m in meta.values() if "sample_n_patches" in m]
    assert len(totals) == 1 and "sample_gallery" in totals[0] and sum("sample_gallery" in m for m in meta.values()) == 1
    sample = totals[0]
    assert sample["sample_n_patches"].value == sum(per_tile) and sample["sample_n_tiles"].value == 64
    assert sample["sample_n_patches"].value > 0.95 * 600
    assert sample["sample_n_patches"].value + sample["sample_n_skipped"].value == 600
    assert sum(m["n_skipped"].value for m in meta.values()) == sample["sample_n_skipped"].value
    assert "no_nucleus" in sample["sample_skipped_by_reason"].value
    assert "label" not in sample["sample_skipped_by_reason"].value
    assert sample["sample_gallery"].value.startswith("![patches per tile](data:image/png;base64,")
    assert sample["sample_path"].value == str(folder)


def _check_finds_a_broken_shard(project) -> None:
    """shards_match_index fails, naming the shard, when a shard is cut short or is not a tar at all."""
    from dagster import build_asset_check_context

    from xenium_assets.defs.checks import shards_match_index

    shards = sorted((project / "samples" / "s1" / "patch_shards").glob("*/shard-00000.tar"))
    short, garbage = shards[0], shards[1]
    short.write_bytes(short.read_bytes()[: short.stat().st_size // 2])  # as if copied half-way
    garbage.write_bytes(b"not a tar")
    context = build_asset_check_context(resources={"project": ProjectResource(data_dir=str(project))})
    result = shards_match_index(context)
    problems = result.metadata["problems"].value
    assert not result.passed and result.metadata["tiles"].value == 64
    assert f"{garbage}: unreadable" in problems and str(short) in problems, problems
