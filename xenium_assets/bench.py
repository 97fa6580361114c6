"""Benchmarks behind `xenium-assets bench ...` (figures, not pass/fail tests)."""

from __future__ import annotations

import resource
import shutil
import tempfile
import time
from pathlib import Path

from xenium_assets.progress import TqdmProgress


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_synth(*, n_cells: int, size: int, version: str, out: Path | None) -> dict:
    """Generate one large bundle and validate it; report wall times, peak memory and sizes."""
    from xenium_assets.bundle.validate import inspect_bundle
    from xenium_assets.synth import SynthParams, generate_bundle

    tmp = None
    if out is None:
        tmp = Path(tempfile.mkdtemp(prefix="xa-bench-"))
        out = tmp / "bundle"
    try:
        params = SynthParams(n_cells=n_cells, width=size, height=size, version=version, seed=1)
        t0 = time.perf_counter()
        result = generate_bundle(out, params, overwrite=True, progress=TqdmProgress())
        synth_s = time.perf_counter() - t0
        synth_peak = _peak_rss_mb()
        t0 = time.perf_counter()
        report = inspect_bundle(out)
        validate_s = time.perf_counter() - t0
        size_gb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e9
        return {
            "cells": result.n_cells,
            "image_px": f"{size}x{size}",
            "xoa_version": version,
            "transcripts": result.n_transcripts,
            "synth_seconds": round(synth_s, 1),
            "synth_peak_rss_mb": round(synth_peak),
            "validate_seconds": round(validate_s, 2),
            "valid_cells": report.n_valid_cells,
            "bundle_gb": round(size_gb, 2),
        }
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def bench_labels(*, h5: Path, resolution: float = 0.5) -> dict:
    """QC and leiden labels of one real matrix (e.g. the 84,518-cell bone marrow), timed step by step."""
    import numpy as np

    from xenium_assets.expression.matrix import read_matrix
    from xenium_assets.expression.qc import run_qc
    from xenium_assets.labels.joint import joint_matrix
    from xenium_assets.labels.leiden import label_leiden
    from xenium_assets.labels.plots import umap_figure

    t0 = time.perf_counter()
    adata = read_matrix(h5)
    adata.obsm["spatial"] = np.zeros((adata.n_obs, 2))  # a bare matrix has no cell table
    read_s = time.perf_counter() - t0
    t = time.perf_counter()
    qc = run_qc(adata)
    qc_s = time.perf_counter() - t
    t = time.perf_counter()
    joint = joint_matrix({"sample": qc.adata})
    labelling = label_leiden(joint, resolution=resolution)
    leiden_s = time.perf_counter() - t
    t = time.perf_counter()
    umap_figure(joint, labelling.label)
    umap_s = time.perf_counter() - t
    return {
        "cells_in": qc.n_cells_in,
        "cells_after_qc": qc.n_cells_out,
        "genes": int(qc.adata.n_vars),
        "clusters": len(set(labelling.label)),
        "read_seconds": round(read_s, 1),
        "qc_seconds": round(qc_s, 1),
        "leiden_seconds": round(leiden_s, 1),
        "umap_seconds": round(umap_s, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "peak_rss_mb": round(_peak_rss_mb()),
    }
