"""The xenium-assets command, run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from dagster import DagsterInstance

from xenium_assets.cli import main
from xenium_assets.defs.partitions import SAMPLES
from xenium_assets_tests.conftest import REPO


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, cmd in group.commands.items():
        yield (*prefix, name)
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))


@pytest.mark.parametrize("command", [(), *_commands(main)], ids=lambda c: " ".join(c) or "main")
def test_every_command_has_help(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "--help" in result.output


def test_synth_then_add_twice(project, tmp_path):
    runner = CliRunner()
    out = tmp_path / "bundles" / "mybundle"
    result = runner.invoke(
        main,
        ["synth", str(out), "--cells", "150", "--width", "1024", "--height", "1024", "--version", "1.7", "--seed", "3"],
    )
    assert result.exit_code == 0, result.output
    assert out.is_dir() and (out.parent / "mybundle.truth.parquet").exists()
    result = runner.invoke(main, ["add", str(out)])
    assert result.exit_code == 0, result.output
    assert "added sample 'mybundle'" in result.output
    result = runner.invoke(main, ["add", str(out)])
    assert result.exit_code == 0 and "nothing to do" in result.output
    import shutil

    shutil.copytree(out, tmp_path / "bundles" / "mybundle_again")  # the same run, copied in again
    result = runner.invoke(main, ["add", str(tmp_path / "bundles" / "mybundle_again"), "--sample", "again"])
    assert result.exit_code == 0 and "skipped:" in result.output and "already registered as mybundle" in result.output
    assert DagsterInstance.get().get_dynamic_partitions(SAMPLES) == ["mybundle"]
    assert "mybundle" in runner.invoke(main, ["samples"]).output


def test_add_refuses_a_broken_bundle(project, tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "experiment.xenium").write_text("{}")
    result = CliRunner().invoke(main, ["add", str(tmp_path / "broken")])
    assert result.exit_code == 2
    assert "refused:" in result.output and "cells.parquet: missing (cell table)" in result.output
    assert DagsterInstance.get().get_dynamic_partitions(SAMPLES) == []


def test_synth_reports_bad_arguments(tmp_path):
    result = CliRunner().invoke(main, ["synth", str(tmp_path / "x"), "--cells", "100000", "--width", "512"])
    assert result.exit_code == 2 and "do not fit" in result.output


def _run(args: list[str], data: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "XENIUM_ASSETS_DATA": str(data), "DAGSTER_HOME": str(data / "dagster_home")}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_dagster_asset_materialize_from_a_shell(project, bundles):
    bin_dir = Path(sys.executable).parent
    bundle = bundles("4")
    result = _run([str(bin_dir / "xenium-assets"), "add", str(bundle), "--sample", "shell_s"], project)
    assert result.returncode == 0, result.stderr
    result = _run(
        [
            str(bin_dir / "dagster"),
            "asset",
            "materialize",
            "-m",
            "xenium_assets.definitions",
            "--select",
            "raw_bundle",
            "--partition",
            "shell_s",
        ],
        project,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (project / "samples" / "shell_s" / "raw_bundle" / "manifest.json").exists()


def test_demo_end_to_end(project):
    result = _run(
        [
            str(Path(sys.executable).parent / "xenium-assets"),
            *("demo", "--cells", "400", "--size", "1024", "--segmenter-steps", "150"),
        ],
        project,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for key in ("demo_a", "demo_b"):
        assert (project / "samples" / key / "raw_bundle" / "manifest.json").exists()
        assert f"{key} raw_bundle:" in result.stdout and f"{key} qc_adata:" in result.stdout
    assert "all samples label_reference:" in result.stdout
    assert (project / "labels" / "reference" / "latest.json").exists()
    for key in ("demo_a", "demo_b"):
        assert f"{key} cell_labels:" in result.stdout
        assert len(list((project / "samples" / key / "cell_labels").glob("*.parquet"))) == 1
        assert f"{key} patch_shards: {project / 'samples' / key / 'patch_shards'}\n" in result.stdout  # the sample's
        assert len(list((project / "samples" / key / "patch_shards").glob("*/index.parquet"))) == 64
    assert "all samples trained_model:" in result.stdout and "all samples evaluation_report:" in result.stdout
    assert "all samples check beats_chance:" in result.stdout
    assert list((project / "reports").glob("*/report.html"))
    instance = DagsterInstance.get()
    # per sample: one run of its per-sample assets, one of its labels and one of all its tiles; the reference;
    # model and report
    runs = instance.get_runs()
    assert len(runs) == 12
    assert sorted(r.job_name for r in runs) == sorted(
        ["ingest_sample"] * 3
        + ["label_sample"] * 3
        + ["cut_patch_shards"] * 2
        + ["build_label_reference", "train_and_evaluate", "train_segmenter", "predict_image"]
    )  # named jobs, so the Runs page says what ran
    assert sorted(instance.get_dynamic_partitions(SAMPLES)) == ["demo_a", "demo_b", "demo_new"]
    _check_held_out_slide(instance, project, result.stdout)
    from xenium_assets.layout import ProjectPaths
    from xenium_assets.runs.demo import register_demo_bundles

    said: list[str] = []
    register_demo_bundles(ProjectPaths(project), instance, n_cells=250, size=1024, echo=said.append)
    assert said == []  # the bundles exist: made once, registered once
    _check_model_and_report(instance, project, result.stdout)
    _check_exports(project)
    _check_a_new_reference_relabels_without_re_cutting(project)


def _check_held_out_slide(instance, project: Path, stdout: str) -> None:
    """The third slide, labelled but never trained on, predicted from its DAPI image alone by the registered
    segmenter and classifier, and scored against its own nuclei and labels."""
    from dagster import AssetKey

    assert "demo_new (its DAPI image alone) cell_predictions:" in stdout
    event = instance.get_latest_materialization_event(AssetKey("cell_predictions"))
    meta = event.asset_materialization.metadata
    assert meta["segmenter_version"].value == "xenium-nucleus-segmenter/1"
    assert meta["model_version"].value == "xenium-dapi-classifier/1"
    assert meta["nuclei"].value > 100 and "held out from training" in meta["end_to_end"].value
    low, high = meta["end_to_end_macro_f1_ci_low"].value, meta["end_to_end_macro_f1_ci_high"].value
    assert low <= meta["end_to_end_macro_f1"].value <= high
    assert 0 <= meta["end_to_end_segmentation_f1"].value <= 1 and "classifier_test_macro_f1" in meta
    assert (project / "predictions" / "demo_new_dapi" / "end_to_end.json").exists()


def _check_exports(project: Path) -> None:
    """`xenium-assets export` to SpatialData (read back with spatialdata) and to Xenium Explorer cell groups."""
    import pandas as pd
    import spatialdata

    from xenium_assets.bundle.manifest import read_manifest

    command = [str(Path(sys.executable).parent / "xenium-assets"), "export", "demo_a", "--to"]
    result = _run([*command, "spatialdata", str(project / "demo_a.zarr")], project)
    assert result.returncode == 0, result.stderr[-3000:]
    sdata = spatialdata.read_zarr(project / "demo_a.zarr")
    assert set(sdata.images) == {"dapi"} and {"cell_boundaries", "nucleus_boundaries"} <= set(sdata.shapes)
    assert len(sdata.images["dapi"].children) > 1  # a multiscale
    table = sdata.tables["table"]
    manifest = read_manifest(project / "samples" / "demo_a" / "raw_bundle")
    bundle_ids = set(pd.read_parquet(manifest.path("cells"), columns=["cell_id"])["cell_id"].astype(str))
    assert set(table.obs["cell_id"]) <= bundle_ids and len(table) == len(sdata.shapes["cell_boundaries"])
    assert {"label", "confidence", "excluded_reason", "predicted", "correct", "passed_qc"} <= set(table.obs)
    labelled = table.obs["label"] != ""
    assert labelled.sum() > 0.8 * len(table) and (table.obs.loc[~labelled, "excluded_reason"] != "").all()
    assert 0 < (table.obs["predicted"] != "").sum() < len(table)  # the test tiles only
    assert table.n_vars > 0 and table.X[table.obs["passed_qc"].to_numpy()].sum() > 0
    result = _run([*command, "explorer", str(project / "explorer")], project)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("expression_labels.csv", "predicted_classes.csv", "prediction_correct.csv"):
        groups = pd.read_csv(project / "explorer" / name)
        assert list(groups.columns) == ["cell_id", "group"] and len(groups) > 0, name
        assert set(groups["cell_id"]) <= bundle_ids, name
    assert set(pd.read_csv(project / "explorer" / "prediction_correct.csv")["group"]) <= {"correct", "incorrect"}
    missing = _run([command[0], "export", "ghost", "--to", "explorer", str(project / "x")], project)
    assert missing.returncode != 0 and "sample 'ghost' has no raw_bundle" in missing.stderr


def _check_a_new_reference_relabels_without_re_cutting(project: Path) -> None:
    """`xenium-assets reference` builds a new version and places every sample in it; no shard file changes."""
    shards = sorted((project / "samples").glob("*/patch_shards/*/*"))
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in shards}
    command = [str(Path(sys.executable).parent / "xenium-assets"), "reference", "--resolution", "0.8"]
    result = _run([*command, "--max-cells", "300"], project)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reference label_reference:" in result.stdout
    for key in ("demo_a", "demo_b"):
        assert f"{key} cell_labels:" in result.stdout
        assert len(list((project / "samples" / key / "cell_labels").glob("*.parquet"))) == 2  # both versions
    assert len([p for p in (project / "labels" / "reference").iterdir() if p.is_dir()]) == 2
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in shards} == before


def _check_model_and_report(instance: DagsterInstance, project: Path, stdout: str) -> None:
    """The demo's trained_model and evaluation_report: their metadata, and the project's MLflow store."""
    import mlflow
    from dagster import AssetKey
    from mlflow.tracking import MlflowClient

    from xenium_assets.defs.tracking import MODEL_PACKAGES, REGISTERED_MODEL, tracking_uri

    def meta(key: str) -> dict:
        return instance.get_latest_materialization_event(AssetKey(key)).asset_materialization.metadata

    model, report = meta("trained_model"), meta("evaluation_report")
    for key in ("test_macro_f1", "test_macro_f1_ci_low", "test_macro_f1_ci_high", "majority_macro_f1"):
        assert isinstance(report[key].value, float), key
    assert isinstance(report["morphology_macro_f1"].value, float)
    assert isinstance(report["permutation_p_value"].value, float)
    assert isinstance(report["n_test_cells"].value, int) and report["n_test_cells"].value > 50
    assert isinstance(report["signal_detected"].value, bool) and isinstance(report["beats_morphology"].value, bool)
    assert report["split"].value.startswith("spatial")
    for key in ("chance_macro_f1_p99", "cnn_minus_morphology", "cnn_minus_morphology_ci_low", "loso_macro_f1_mean"):
        assert isinstance(report[key].value, float), key
    low, high = report["cnn_minus_morphology_ci_low"].value, report["cnn_minus_morphology_ci_high"].value
    assert report["beats_morphology"].value is (low > 0) and low <= high
    assert isinstance(report["n_buffer_cells"].value, int) and report["n_buffer_cells"].value > 0
    assert report["resampling_unit"].value.startswith("test tiles")
    assert "demo_a" in report["loso"].value and "demo_b" in report["loso"].value
    assert model["n_buffer_cells"].value == report["n_buffer_cells"].value
    assert (project / "reports" / model["mlflow_run_id"].value / "report.html").exists()
    passed = report["signal_detected"].value
    assert f"check beats_chance: {'passed' if passed else 'FAILED'}" in stdout
    uri = tracking_uri(project)
    client = MlflowClient(uri)
    run = client.get_run(model["mlflow_run_id"].value)
    assert model["mlflow_run"].value.endswith(run.info.run_id)
    assert run.info.status == "FINISHED"  # ended by dagster-mlflow's hook with the Dagster run
    assert run.data.params["backbone"] == "resnet10t" and "label_version" in run.data.tags
    assert run.info.run_name.startswith(run.data.tags["label_version"] + " 20")  # the label version and the date
    assert len(client.get_metric_history(run.info.run_id, "val_macro_f1")) == model["epochs"].value  # curves
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/best.ckpt", "model/model.json", "model/split.parquet", "model/shards.txt"} <= artifacts
    assert "report_test_macro_f1" in run.data.metrics
    registered = client.get_latest_versions(REGISTERED_MODEL)[0]
    assert registered.run_id == run.info.run_id
    mlflow.set_tracking_uri(uri)
    requirements = Path(mlflow.pyfunc.get_model_dependencies(registered.source)).read_text()
    assert all(f"{name}==" in requirements for name in MODEL_PACKAGES), requirements
