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
