"""The benchmarks' code paths on tiny inputs: their figures exist and agree with each other (never timed here)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from xenium_assets.cli import main

PREDICT_FIELDS = (
    "nuclei",
    "image_px",
    "segmentation_seconds",
    "classification_seconds",
    "seconds",
    "nuclei_per_second",
    "peak_worker_rss_mb",
)


def test_bench_predict_reports_consistent_figures_on_a_tiny_image(tmp_path):
    from xenium_assets.bench import bench_predict

    figures = bench_predict(
        n_cells=300,
        size=1024,
        small_cells=60,
        small_size=512,
        workers=1,
        segmenter="classical",
        model=None,
        cache=tmp_path / "bench",
        tile_px=1024,
        train_cells=600,
        train_size=1536,
        train_epochs=1,
    )
    assert json.loads(json.dumps(figures)) == figures
    assert set(PREDICT_FIELDS) | {"peak_worker_rss_mb_512px"} <= set(figures)
    assert figures["image_px"] == "1024x1024" and figures["segmenter"] == "classical"
    assert 150 <= figures["nuclei"] <= 450  # 300 synthetic nuclei, found by the classical segmenter
    assert 0 < figures["nuclei_512px"] <= 120
    assert (
        abs(figures["nuclei_per_second"] - figures["nuclei"] / figures["seconds"])
        <= 0.01 * figures["nuclei_per_second"] + 0.2
    )
    # Stage seconds are summed over the tiles in the worker; on one worker they fit in the run's wall time.
    assert 0 < figures["segmentation_seconds"] + figures["classification_seconds"] <= figures["tiles_seconds"] + 0.2
    parts = ("image_store", "tiles", "label_image", "pyramid_table_spatialdata", "overview")
    assert abs(sum(figures[f"{p}_seconds"] for p in parts) - figures["seconds"]) <= 1.0
    assert figures["peak_worker_rss_mb"] > 0 and figures["peak_worker_rss_mb_512px"] > 0
    assert figures["torch_threads_per_worker"] == [1] and figures["inference_device"] in ("cpu", "cuda:0")


def test_bench_predict_is_a_command():
    result = CliRunner().invoke(main, ["bench", "predict", "--help"])
    assert result.exit_code == 0, result.output
    assert "--segmenter [learned|classical]" in result.output and "--json" in result.output
