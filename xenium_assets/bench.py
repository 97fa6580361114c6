"""Benchmarks behind `xenium-assets bench ...` (figures, not pass/fail tests)."""

from __future__ import annotations

import resource
import shutil
import tempfile
import time
from pathlib import Path

from xenium_assets.formats import XeniumFile
from xenium_assets.layout import BENCH_VIEW_SCREENSHOT, GeometryFiles, ProjectPaths, SegmenterFiles
from xenium_assets.prediction.options import PredictOptions
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


def _qc_path(folder: Path, sample: str) -> Path:
    """Where qc_adata would keep ``sample``'s AnnData in a project at ``folder``."""

    path = ProjectPaths(folder).qc_adata(sample).adata
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def resampled_copies(h5: Path, n_samples: int, folder: Path, seed: int, progress) -> dict[str, Path]:
    """``n_samples`` Poisson-resampled copies of one matrix, each QC'd and written as qc_adata writes it."""
    import numpy as np

    from xenium_assets.expression.matrix import read_matrix
    from xenium_assets.expression.qc import run_qc

    raw = read_matrix(h5)
    raw.obsm["spatial"] = np.zeros((raw.n_obs, 2))  # a bare matrix has no cell table
    rng = np.random.default_rng(seed)
    paths = {}
    for i in range(n_samples):
        copy = raw.copy()
        copy.X.data = rng.poisson(copy.X.data).astype(copy.X.dtype)
        copy.X.eliminate_zeros()
        paths[f"s{i:02d}"] = _qc_path(folder, f"s{i:02d}")
        run_qc(copy).adata.write_h5ad(paths[f"s{i:02d}"], compression="gzip")
        progress("resampled samples", i + 1, n_samples)
    return paths


def _large_sample(h5: Path, n_cells: int, path: Path, seed: int) -> Path:
    """A sample of ``n_cells`` cells drawn with replacement from the matrix (each Poisson-resampled), QC'd."""
    import anndata as ad
    import numpy as np

    from xenium_assets.expression.matrix import read_matrix
    from xenium_assets.expression.qc import QcParams, run_qc

    raw = read_matrix(h5)
    keep = np.flatnonzero(np.asarray(raw.X.sum(axis=1)).ravel() >= QcParams().min_transcripts)
    rng = np.random.default_rng(seed)
    drawn = int(n_cells * 1.25)  # some fail QC after resampling: draw more, keep the first n_cells that pass
    big = ad.AnnData(X=raw.X[rng.choice(keep, drawn, replace=True)], var=raw.var.copy())
    big.obs_names = [f"cell{i}" for i in range(drawn)]
    big.X.data = rng.poisson(big.X.data).astype(big.X.dtype)
    big.X.eliminate_zeros()
    big.obsm["spatial"] = np.zeros((drawn, 2))
    qc = run_qc(big).adata
    qc[: min(n_cells, qc.n_obs)].copy().write_h5ad(path, compression="gzip")
    return path


def _reference_steps(paths: dict[str, Path], max_cells: int, out: Path, progress) -> tuple:
    """Build, save and draw the reference as label_reference does; the built reference and seconds per step."""
    from xenium_assets.labels.options import MethodOptions, ReferenceParams
    from xenium_assets.labels.plots import umap_figure
    from xenium_assets.labels.reference import build_reference

    steps: dict[str, float] = {}

    def timed(stage: str, done: int, total: int) -> None:
        progress(stage, done, total)
        steps[f"{stage} {done}/{total}"] = time.perf_counter()

    t0 = time.perf_counter()
    built = build_reference(paths, MethodOptions(), ReferenceParams(max_cells=max_cells), "bench", progress=timed)
    built.reference.save(out, built.cells_table(), built.labelling.markers)
    saved = time.perf_counter()
    umap_figure(built.cells, built.labelling.label)
    sketched = steps[f"sketch {len(paths)}/{len(paths)}"]
    parts = {
        "sketch": sketched - t0,
        "pca": steps["reference 1/4"] - sketched,
        "harmony": steps["reference 2/4"] - steps["reference 1/4"],
        "classes": steps["reference 3/4"] - steps["reference 2/4"],
        "voters_and_save": saved - steps["reference 3/4"],
        "umap": time.perf_counter() - saved,
    }
    return built, parts


def _all_voters_agreement(built, sample: str, path: Path, placed) -> tuple[float, float]:
    """The share of cells with the same label, and the ARI, between ``placed`` (labels with the reference's voters)
    and the same sample placed with every sketch cell voting."""
    import dataclasses

    import pandas as pd
    from sklearn.metrics import adjusted_rand_score

    from xenium_assets.labels.matrix import read_counts
    from xenium_assets.labels.reference import label_sample

    reference = built.reference
    codes = pd.Categorical(built.labelling.label, categories=reference.classes).codes
    everyone = dataclasses.replace(reference, embedding=built.cells.obsm["X_integrated"], codes=codes)
    table, _ = label_sample(everyone, read_counts(sample, path), min_confidence=0.5)
    same = float((placed["label"].to_numpy() == table["label"].to_numpy()).mean())
    return same, float(adjusted_rand_score(placed["label"], table["label"]))


def bench_labels(*, h5: Path, n_samples: int = 32, max_cells: int = 200_000, add_cells: int = 100_000) -> dict:
    """The label reference of ``n_samples`` resampled copies of one matrix, every sample placed in it, then one
    more sample of ``add_cells`` cells added; timed per step, with the process's peak memory."""
    from xenium_assets.labels.matrix import read_counts
    from xenium_assets.labels.reference import label_sample
    from xenium_assets.labels.store import load_reference, mark_latest, write_labels

    progress = TqdmProgress()
    work = Path(tempfile.mkdtemp(prefix="xa-bench-labels-"))
    project = ProjectPaths(work)
    try:
        t0 = time.perf_counter()
        paths = resampled_copies(h5, n_samples, work, 0, progress)
        generate_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        built, parts = _reference_steps(paths, max_cells, project.reference_dir("bench"), progress)
        mark_latest(project, "bench")
        reference_s = time.perf_counter() - t0
        reference = load_reference(project)
        per_sample, first = [], None
        t0 = time.perf_counter()
        for i, (sample, path) in enumerate(paths.items()):
            t = time.perf_counter()
            table, _ = label_sample(reference, read_counts(sample, path), min_confidence=0.5)
            write_labels(project, table)
            per_sample.append((time.perf_counter() - t, len(table)))
            first = table if first is None else first
            progress("label samples", i + 1, len(paths))
        labelling_s = time.perf_counter() - t0
        written = {p: p.stat().st_mtime_ns for p in project.all_labels("*")}
        big = _large_sample(h5, add_cells, _qc_path(work, "added"), 1)
        t = time.perf_counter()
        added, _ = label_sample(reference, read_counts("added", big), min_confidence=0.5)
        write_labels(project, added)
        add_s = time.perf_counter() - t
        cells = sum(n for _, n in per_sample)
        return {
            "cells": cells,
            "samples": n_samples,
            "sketch_cells": len(built.cells),
            "voters": len(reference.codes),
            "classes": len(reference.classes),
            "generate_seconds": round(generate_s, 1),
            "reference_seconds": round(reference_s, 1),
            "reference_parts_seconds": {k: round(v, 1) for k, v in parts.items()},
            "labelling_seconds": round(labelling_s, 1),
            "end_to_end_seconds": round(reference_s + labelling_s, 1),
            "sample_seconds_min": round(min(s for s, _ in per_sample), 2),
            "sample_seconds_max": round(max(s for s, _ in per_sample), 2),
            "seconds_per_100k_cells": round(labelling_s / cells * 1e5, 2),
            "added_sample_cells": len(added),
            "added_sample_seconds": round(add_s, 1),
            "added_seconds_per_100k_cells": round(add_s / len(added) * 1e5, 2),
            "other_samples_untouched": all(p.stat().st_mtime_ns == m for p, m in written.items()),
            **dict(
                zip(
                    ("same_label_as_all_sketch_voters", "ari_vs_all_sketch_voters"),
                    (round(v, 3) for v in _all_voters_agreement(built, "s00", paths["s00"], first)),
                    strict=True,
                )
            ),
            "peak_rss_mb": round(_peak_rss_mb()),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


class _PeakRss:
    """Polls the resident memory of this process's children (dask workers) and keeps each one's peak."""

    def __init__(self, interval: float = 0.1) -> None:
        import threading

        self.interval = interval
        self.peaks: dict[int, int] = {}
        self.timeline: list[tuple[float, int]] = []
        """(time, the largest child's resident bytes) at each poll."""
        self.cpu: dict[int, tuple[float, float]] = {}
        """Each child's user + system CPU seconds when first and last seen (within ``interval`` of its end)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            largest = 0
            for child in me.children(recursive=True):
                try:
                    rss = child.memory_info().rss
                    cpu = child.cpu_times()
                except psutil.Error:
                    continue
                self.peaks[child.pid] = max(self.peaks.get(child.pid, 0), rss)
                largest = max(largest, rss)
                first = self.cpu.get(child.pid, (cpu.user + cpu.system,))[0]
                self.cpu[child.pid] = (first, cpu.user + cpu.system)
            self.timeline.append((time.perf_counter(), largest))
            self._stop.wait(self.interval)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def max_mb(self) -> float:
        return max(self.peaks.values(), default=0) / 2**20

    def max_mb_between(self, start: float, end: float) -> float:
        """The largest child's peak between two ``time.perf_counter()`` readings."""
        return max((rss for t, rss in self.timeline if start <= t <= end), default=0) / 2**20

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds the children used while watched."""
        return sum(last - first for first, last in self.cpu.values())


def _bench_bundle(cache: Path, name: str, n_cells: int, size: int, seed: int, crowding: float = 0.0) -> Path:
    """A large synthetic bundle, generated once and kept in ``cache``."""
    from xenium_assets.synth import SynthParams, generate_bundle

    bundle = cache / name
    if not (bundle / XeniumFile.EXPERIMENT).exists():
        params = SynthParams(n_cells=n_cells, width=size, height=size, version="3", seed=seed, crowding=crowding)
        generate_bundle(bundle, params, overwrite=True, progress=TqdmProgress())
    return bundle


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def _extract(bundle: Path, work: Path, workers: int) -> dict:
    """This project's extraction of all cells to shards: transcode and geometry split side by side, then all
    tiles on dask."""
    from concurrent.futures import ThreadPoolExecutor

    from xenium_assets.bundle.manifest import write_manifest
    from xenium_assets.bundle.polygons import ProblemKind, read_cell_problems
    from xenium_assets.bundle.validate import inspect_bundle
    from xenium_assets.parallel import dask_client, dask_runner
    from xenium_assets.patches.dapi_store import transcode_dapi
    from xenium_assets.patches.extract import extract_tile, largest_first, tile_tasks, warm_up
    from xenium_assets.patches.geometry import split_by_tile
    from xenium_assets.patches.grid import TILE_KEYS, PatchSpec

    spec = PatchSpec()
    manifest = write_manifest(inspect_bundle(bundle), "bench", work / "raw")
    problems = read_cell_problems(manifest.cell_problems, ProblemKind.INVALID)
    with dask_client(n_workers=workers) as client, ThreadPoolExecutor(1) as beside:
        # As patch_shards does, and as the floor runs with tifffile and imagecodecs already loaded: the workers load
        # the task code and the compiled mask kernel first, timed on its own.
        warmup_seconds = max(client.run(warm_up).values())
        run = dask_runner(client, TqdmProgress())
        t0 = time.perf_counter()
        # The polygon split needs only the bundle: it runs beside the transcode, as tile_geometry runs beside
        # dapi_zarr in a Dagster run (each in its own step process), timed on its own.
        split = beside.submit(_timed, split_by_tile, manifest, spec, work / "geometry")
        with _PeakRss() as transcode_memory:
            store = transcode_dapi(manifest, work / "dapi", spec.pixel_size_um, run)
        t1 = time.perf_counter()
        geometry_seconds = split.result()
        t2 = time.perf_counter()
        tasks = tile_tasks("bench", store, work / "geometry", problems, list(TILE_KEYS), work / "shards", spec)
        with _PeakRss() as tiles_memory:
            results = list(run(extract_tile, [{"task": t} for t in largest_first(tasks)], "patch shards"))
        t3 = time.perf_counter()
    return {
        "warmup_seconds": warmup_seconds,
        "transcode_seconds": t1 - t0,
        "geometry_seconds": geometry_seconds,
        "geometry_wait_seconds": t2 - t1,
        "tiles_seconds": t3 - t2,
        "total_seconds": t3 - t0,
        "peak_worker_rss_mb": max(transcode_memory.max_mb, tiles_memory.max_mb),
        "peak_worker_rss_mb_transcode": transcode_memory.max_mb,
        "peak_worker_rss_mb_tiles": tiles_memory.max_mb,
        "patches": sum(r["n_patches"] for r in results),
        "shard_bytes": sum(r["bytes"] for r in results),
        "manifest": manifest,
    }


def bench_patches(
    *, n_cells: int, size: int, small_cells: int, small_size: int, workers: int, sample_cells: int, cache: Path
) -> dict:
    """Floor, this project's extraction, halo-direct reads, baselines, memory at two sizes, 1 vs N workers."""
    import shutil
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq
    import tifffile

    from xenium_assets.bundle.image import find_dapi, open_plane
    from xenium_assets.bundle.locate import locate_files
    from xenium_assets.patches import baselines, grid
    from xenium_assets.patches.extract import warm_up
    from xenium_assets.raster import read_window

    cache.mkdir(parents=True, exist_ok=True)
    big = _bench_bundle(cache, f"bench_{size}px_{n_cells}cells", n_cells, size, seed=21)
    small = _bench_bundle(cache, f"bench_{small_size}px_{small_cells}cells", small_cells, small_size, seed=22)
    # numba's on-disk cache of the mask kernel, made here where a fresh checkout has none, so that every cluster's
    # workers below load it alike: a worker that compiles it keeps about 29 MB more (304 against 275 MB after
    # warm_up), and on a fresh checkout only the first cluster's (the 20k² slide's) did.
    warm_up()
    work = Path(tempfile.mkdtemp(prefix="xa-bench-patches-", dir=cache))
    try:
        # The floor: decode the level-0 DAPI once, same worker count; once before the extraction and once after,
        # their mean the floor, so that the machine's drift during the run (a fifth, some days) cancels. Both
        # decodes and the extraction read the file from the page cache: it is read through first.
        dapi_image = find_dapi(locate_files(big).focus)
        dapi, ifd = dapi_image.file, dapi_image.ifd
        with open(dapi, "rb") as f:
            while f.read(1 << 26):
                pass

        def decode_floor() -> tuple[float, np.ndarray]:
            t = time.perf_counter()
            with tifffile.TiffFile(dapi, is_ome=False) as tif:
                image = tif.pages[ifd].asarray(maxworkers=workers)
            return time.perf_counter() - t, image

        def one_worker() -> float:
            seconds = _extract(big, work / "one", 1)["total_seconds"]
            shutil.rmtree(work / "one")
            return seconds

        # One worker just before the floor and the extraction they are compared with, and once more just after: the
        # machine's speed drifts during a run, and the mean of two runs around the extraction cancels a steady drift,
        # as the floor's two decodes do.
        one_before = one_worker()
        floor_before, _ = decode_floor()
        ours = _extract(big, work / "big", workers)
        manifest = ours.pop("manifest")
        floor_after, image = decode_floor()
        one_after = one_worker()
        floor = (floor_before + floor_after) / 2
        one = (one_before + one_after) / 2
        # The alternative to transcoding: read each tile plus its halo straight from the JPEG-2000 TIFF.
        halo = grid.PatchSpec().halo_px
        windows = [grid.tile_window(k, size, size).pad(halo) for k in grid.TILE_KEYS]

        def read_direct(win):
            with open_plane(dapi, ifd) as plane:
                return read_window(plane, win).sum()

        t = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(read_direct, windows))
        halo_direct = time.perf_counter() - t
        small_run = _extract(small, work / "small", workers)
        # Baselines on a sample of cells, projected to all cells.
        cells = pq.read_table(GeometryFiles(work / "big" / "geometry").cells).to_pandas()
        cells = cells[cells["n_nuclei"] > 0].sample(sample_cells, random_state=0)
        vertices = ["cell_id", "vertex_x", "vertex_y"]
        nuclei = pd.read_parquet(big / XeniumFile.NUCLEUS_BOUNDARIES_PARQUET, columns=vertices)
        bounds = pd.read_parquet(big / XeniumFile.CELL_BOUNDARIES_PARQUET, columns=vertices)
        patch_px = grid.PatchSpec().size_px
        seed_per_cell = baselines.seed_patches(image, nuclei, bounds, cells, patch_px, manifest.pixel_size_um)
        del image
        import dask.array as da

        with tifffile.TiffFile(dapi, is_ome=False) as tif, tif.series[0].aszarr(level=0) as store:
            lazy = da.from_zarr(store, chunks=(1024, 1024))
            tiles_per_cell = baselines.imagetiles_patches(lazy, cells.head(min(50, sample_cells)), patch_px)
        n = ours["patches"]
        seed_projected = floor + seed_per_cell * n
        tiles_projected = tiles_per_cell * n
        return {
            "cells": n_cells,
            "image_px": f"{size}x{size}",
            "workers": workers,
            "patches": n,
            "shard_gb": round(ours["shard_bytes"] / 1e9, 2),
            "floor_seconds": round(floor, 1),
            "floor_before_seconds": round(floor_before, 1),
            "floor_after_seconds": round(floor_after, 1),
            "warmup_seconds": round(ours["warmup_seconds"], 1),
            "transcode_seconds": round(ours["transcode_seconds"], 1),
            "geometry_seconds": round(ours["geometry_seconds"], 1),
            "geometry_wait_seconds": round(ours["geometry_wait_seconds"], 1),
            "tiles_seconds": round(ours["tiles_seconds"], 1),
            "extraction_seconds": round(ours["total_seconds"], 1),
            "extraction_vs_floor": round(ours["total_seconds"] / floor, 2),
            "halo_direct_read_seconds": round(halo_direct, 1),
            "halo_direct_vs_transcode": round(halo_direct / ours["transcode_seconds"], 2),
            "seed_ms_per_cell": round(seed_per_cell * 1e3, 2),
            "seed_projected_seconds": round(seed_projected, 1),
            "seed_vs_extraction": round(seed_projected / ours["total_seconds"], 1),
            "imagetiles_ms_per_cell": round(tiles_per_cell * 1e3, 2),
            "imagetiles_projected_seconds": round(tiles_projected, 1),
            "imagetiles_vs_extraction": round(tiles_projected / ours["total_seconds"], 1),
            "one_worker_seconds": round(one, 1),
            "one_worker_before_seconds": round(one_before, 1),
            "one_worker_after_seconds": round(one_after, 1),
            "speedup_vs_one_worker": round(one / ours["total_seconds"], 2),
            "peak_worker_rss_mb": round(ours["peak_worker_rss_mb"]),
            f"peak_worker_rss_mb_{small_size}px": round(small_run["peak_worker_rss_mb"]),
            **{
                f"peak_worker_rss_mb_{phase}{suffix}": round(r[f"peak_worker_rss_mb_{phase}"])
                for phase in ("transcode", "tiles")
                for suffix, r in (("", ours), (f"_{small_size}px", small_run))
            },
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_view(*, n_cells: int, size: int, cache: Path) -> dict:
    """Seconds from nothing to the napari viewer's first drawn view of a large sample (image, segmentation,
    labels), against the naive start: reading the full-resolution DAPI plane before anything shows."""
    import shutil
    import tempfile

    import tifffile

    from xenium_assets.bundle.manifest import write_manifest
    from xenium_assets.bundle.validate import inspect_bundle
    from xenium_assets.labels.store import mark_latest, write_labels
    from xenium_assets.synth import truth_labels
    from xenium_assets.viewer.data import load_view_data
    from xenium_assets.viewer.display import virtual_display

    cache.mkdir(parents=True, exist_ok=True)
    bundle = _bench_bundle(cache, f"bench_{size}px_{n_cells}cells", n_cells, size, seed=21)
    work = Path(tempfile.mkdtemp(prefix="xa-bench-view-", dir=cache))
    shot_path = cache / BENCH_VIEW_SCREENSHOT  # kept to look at; the sample's working files are not
    try:
        paths = ProjectPaths(work)
        manifest = write_manifest(inspect_bundle(bundle), "bench", paths.raw_bundle("bench").folder)
        truth = truth_labels(bundle, "bench")
        write_labels(paths, truth)
        mark_latest(paths, truth["label_version"].iloc[0])

        with virtual_display():
            t0 = time.perf_counter()
            import napari  # noqa: F401 (timed: part of what a user waits for)

            from xenium_assets.viewer.app import build_viewer, save_screenshot

            t1 = time.perf_counter()
            data = load_view_data(paths, "bench")
            t2 = time.perf_counter()
            viewer = build_viewer(data)
            t3 = time.perf_counter()
            shot = save_screenshot(viewer, shot_path)
            t4 = time.perf_counter()
            viewer.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    first_view = t4 - t0
    peak = _peak_rss_mb()  # before the naive read below, which alone holds the whole plane
    naive_start = time.perf_counter()
    with tifffile.TiffFile(manifest.dapi_path) as tif:
        tif.pages[manifest.dapi.ifd].asarray()
    naive = time.perf_counter() - naive_start
    return {
        "cells": len(data.geometry.ids),
        "image_px": f"{manifest.dapi.levels[0][1]} x {manifest.dapi.levels[0][0]}, {len(manifest.dapi.levels)} levels",
        "import_napari_seconds": round(t1 - t0, 2),
        "read_polygons_seconds": round(t2 - t1, 2),
        "build_layers_seconds": round(t3 - t2, 2),
        "first_draw_seconds": round(t4 - t3, 2),
        "first_view_seconds": round(first_view, 2),
        "goal_seconds": 10,
        "naive_full_dapi_read_seconds": round(naive, 2),
        "first_view_vs_naive": round(first_view / naive, 2),
        "screenshot": f"{shot_path} ({shot.shape[1]} x {shot.shape[0]})",
        "peak_rss_mb": round(peak),
    }


def bench_calibration(*, replicates: int = 1000, dependence: tuple[float, ...] = (0.2, 0.3)) -> dict:
    """Rejection rates at alpha 0.01 and 0.05 of the shifted-label test and the cell-level shuffle, on simulated
    demo-like test sets: independent clumped maps (false positives), then maps with ``dependence`` (power)."""
    from xenium_assets.training.calibration import Scenario, calibrate, rejection_rates

    start = time.perf_counter()
    null = calibrate(replicates, first_seed=100_000)
    figures: dict = {"replicates": replicates, "median_test_cells": float(null["n_test"].median())}
    for alpha in (0.01, 0.05):
        for test, rate in rejection_rates(null, alpha).items():
            figures[f"false_positive_rate_{test}_alpha_{alpha}"] = rate
    for d in dependence:
        rates = rejection_rates(calibrate(replicates, Scenario(dependence=d), first_seed=200_000), 0.01)
        figures[f"power_shift_dependence_{d}"] = rates["shift"]
    figures["seconds"] = round(time.perf_counter() - start, 1)
    return figures


def _segmentation_figures(prefix: str, name: str, matchings: list, touching: list[tuple[int, int]]) -> dict:
    from xenium_assets.segmentation.metrics import pool

    summary = pool(matchings)
    n_touching = sum(t for t, _ in touching)
    found = sum(f for _, f in touching)
    return {
        f"{prefix}_{name}_precision": round(summary.precision, 4),
        f"{prefix}_{name}_recall": round(summary.recall, 4),
        f"{prefix}_{name}_f1": round(summary.f1, 4),
        f"{prefix}_{name}_mean_iou": round(summary.mean_iou, 4),
        f"{prefix}_{name}_touching_recall": round(found / n_touching, 4) if n_touching else float("nan"),
    }


def bench_segmentation(
    *,
    real: Path,
    cache: Path,
    steps: int | None = None,
    use_tuning: bool = True,
    seed: int = 0,
) -> dict:
    """Trains the learned nucleus segmenter (synthetic DAPI, and the real set's tuning images unless
    ``use_tuning`` is off) and compares it with the classical one: object precision, recall, F1 at IoU 0.5, mean
    matched IoU and recall of touching nuclei, on a held-out synthetic bundle's tiles and the real set's held-out
    images. Per-image real figures are written beside the model in ``cache``."""
    import numpy as np
    import pandas as pd
    import tifffile

    from xenium_assets.raster import Window, tile_windows
    from xenium_assets.segmentation.bundle_nuclei import read_bundle_nuclei
    from xenium_assets.segmentation.classical import segment_nuclei
    from xenium_assets.segmentation.learned import LearnedSegmenter, SegmenterConfig
    from xenium_assets.segmentation.metrics import match
    from xenium_assets.segmentation.reference_images import reference_images
    from xenium_assets.segmentation.touching import touching_recall
    from xenium_assets.segmentation.training import train_segmenter

    progress = TqdmProgress()
    cache.mkdir(parents=True, exist_ok=True)
    held_out = reference_images(real, "held_out")
    tuning = reference_images(real, "tuning") if use_tuning else []
    # Crowded tissue (half the cells in regions where nuclei touch), where a threshold alone merges neighbours.
    train_bundle = _bench_bundle(cache, "seg_train_2048px_1500cells_crowded", 1500, 2048, seed=31, crowding=0.5)
    test_bundle = _bench_bundle(cache, "seg_test_2048px_1500cells_crowded", 1500, 2048, seed=32, crowding=0.5)
    train_nuclei, test_nuclei = read_bundle_nuclei(train_bundle), read_bundle_nuclei(test_bundle)

    # Training: the training bundle's top three quarters; its bottom quarter and the tuning images validate.
    height, width = train_nuclei.shape
    split = height * 3 // 4
    synthetic = [train_nuclei.window(Window(0, 0, split, width))]
    synthetic_val = [train_nuclei.window(Window(split, 0, height - split, width))]
    pairs = [(n.image, n.labels, n.diameter_px) for n in synthetic]
    val_pairs = [(n.image, n.labels, n.diameter_px) for n in synthetic_val]
    real_pairs = [(tifffile.imread(r.image), tifffile.imread(r.mask), r.diameter_px) for r in tuning]
    # Half the crops from the synthetic bundle, half from the real tuning images (when used).
    weights = [1.0] * len(pairs) + ([1.0 / len(real_pairs)] * len(real_pairs) if real_pairs else [])
    config = SegmenterConfig(seed=seed) if steps is None else SegmenterConfig(seed=seed, steps=steps)
    out = cache / "segmenter"
    fit = train_segmenter(
        pairs + real_pairs,
        config,
        out,
        val_pairs=val_pairs + real_pairs,
        weights=weights,
        progress=progress,
        description={"tuning_images": [r.image_id for r in tuning]},
    )
    learned = LearnedSegmenter.load(fit.checkpoint)
    segmenters = {"learned": learned, "classical": segment_nuclei}

    figures: dict = {
        "encoder": config.encoder,
        "train_steps": fit.steps,
        "train_seconds": round(fit.seconds, 1),
        "accelerator": fit.accelerator,
        "best_val_loss": round(fit.best_val_loss, 4),
    }
    start = time.perf_counter()
    tiles = tile_windows(*test_nuclei.shape, 1024)
    synthetic_results: dict = {k: ([], []) for k in segmenters}
    for i, win in enumerate(tiles):
        progress("synthetic tiles", i, len(tiles))
        tile = test_nuclei.window(win)
        for name, segment in segmenters.items():
            found = segment(tile.image, tile.diameter_px)
            synthetic_results[name][0].append(match(tile.labels, found))
            synthetic_results[name][1].append(touching_recall(tile.labels, found))
    progress("synthetic tiles", len(tiles), len(tiles))
    figures["synthetic_tiles"] = len(tiles)
    figures["synthetic_true_nuclei"] = sum(m.n_true for m in synthetic_results["learned"][0])
    figures["synthetic_touching_nuclei"] = sum(t for t, _ in synthetic_results["learned"][1])
    for name, (matchings, touching) in synthetic_results.items():
        figures.update(_segmentation_figures("synthetic", name, matchings, touching))

    rows = []
    real_results: dict = {k: ([], []) for k in segmenters}
    for i, ref in enumerate(held_out):
        progress("real images", i, len(held_out))
        image, truth = tifffile.imread(ref.image), tifffile.imread(ref.mask)
        row = {"image_id": ref.image_id, "diameter_px": ref.diameter_px, "true_nuclei": int(len(np.unique(truth)) - 1)}
        for name, segment in segmenters.items():
            found = segment(image, ref.diameter_px)
            m = match(truth, found)
            real_results[name][0].append(m)
            real_results[name][1].append(touching_recall(truth, found))
            row.update({f"{name}_f1": m.f1, f"{name}_precision": m.precision, f"{name}_recall": m.recall})
            row[f"{name}_mean_iou"] = m.mean_iou
        rows.append(row)
    progress("real images", len(held_out), len(held_out))
    per_image = pd.DataFrame(rows)
    per_image_path = SegmenterFiles(out).per_image
    per_image.to_csv(per_image_path, index=False)
    figures["real_images"] = len(held_out)
    figures["real_true_nuclei"] = sum(m.n_true for m in real_results["learned"][0])
    figures["real_touching_nuclei"] = sum(t for t, _ in real_results["learned"][1])
    for name, (matchings, touching) in real_results.items():
        figures.update(_segmentation_figures("real", name, matchings, touching))
    figures["real_images_learned_better"] = int((per_image["learned_f1"] > per_image["classical_f1"]).sum())
    figures["real_images_classical_better"] = int((per_image["learned_f1"] < per_image["classical_f1"]).sum())
    figures["real_per_image"] = str(per_image_path)
    figures["evaluate_seconds"] = round(time.perf_counter() - start, 1)
    figures["tuning_images"] = ",".join(r.image_id for r in tuning) or "none"
    return figures


# ---------------------------------------------------------------------------------------------- bench predict


def _sample_shards(bundle: Path, root: Path, sample: str) -> Path:
    """A bundle through the patch pipeline (manifest, DAPI store, tile geometry, every tile's shards), in this
    process: what training reads. Returns the shards folder."""
    from xenium_assets.bundle.manifest import write_manifest
    from xenium_assets.bundle.polygons import ProblemKind, read_cell_problems
    from xenium_assets.bundle.validate import inspect_bundle
    from xenium_assets.parallel import thread_runner
    from xenium_assets.patches.dapi_store import transcode_dapi
    from xenium_assets.patches.extract import extract_tile, tile_tasks
    from xenium_assets.patches.geometry import split_by_tile
    from xenium_assets.patches.grid import TILE_KEYS, PatchSpec

    spec = PatchSpec()
    manifest = write_manifest(inspect_bundle(bundle), sample, root / "raw")
    store = transcode_dapi(manifest, root / "dapi", spec.pixel_size_um, thread_runner(2))
    split_by_tile(manifest, spec, root / "geometry")
    problems = read_cell_problems(manifest.cell_problems, ProblemKind.INVALID)
    for task in tile_tasks(sample, store, root / "geometry", problems, list(TILE_KEYS), root / "shards", spec):
        extract_tile(task)
    return root / "shards"


def _predict_classifier(cache: Path, n_cells: int, size: int, epochs: int) -> Path:
    """A small DAPI-only classifier (the default representation, dapi_nucleus_ring) trained once on two small
    synthetic bundles' true classes and kept in ``cache``: the benchmark measures prediction, not the model."""
    import pandas as pd

    from xenium_assets.labels.store import usable_labels
    from xenium_assets.layout import ModelFiles
    from xenium_assets.synth import truth_labels
    from xenium_assets.training.run import train_model
    from xenium_assets.training.train import TrainConfig

    folder = cache / f"predict_classifier_{size}px_{n_cells}cells_{epochs}epochs"
    if ModelFiles(folder).card.exists():
        return folder
    bundles = {
        name: _bench_bundle(cache, f"predict_train_{size}px_{n_cells}cells_{name}", n_cells, size, seed=seed)
        for name, seed in (("a", 41), ("b", 42))
    }
    work = Path(tempfile.mkdtemp(prefix="xa-bench-classifier-", dir=cache))
    try:
        shards = {name: _sample_shards(bundle, work / name, name) for name, bundle in bundles.items()}
        labels = usable_labels(pd.concat([truth_labels(bundle, name) for name, bundle in bundles.items()]))
        train = TrainConfig(max_epochs=epochs, patience=epochs)
        train_model(shards, labels, "truth-1", work / "model", train=train, report=lambda _: None)
        if folder.exists():
            shutil.rmtree(folder)
        (work / "model").rename(folder)  # whole or not at all: the card is what marks it cached
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


def _predict_segmenter(cache: Path, kind: str, steps: int | None):
    """The segmenter the benchmark predicts with, and its training seconds (0 when cached or classical). The
    nucleus diameter is the synthetic nuclei's median (as ``nucleus_segmenter`` records its training nuclei's);
    the learned one is trained once, as ``bench segmentation`` trains it but on synthetic DAPI alone (the crowded
    2048² bundle's top three quarters; its bottom quarter validates), and kept in ``cache``."""
    from xenium_assets.prediction.tiles import SegmenterChoice
    from xenium_assets.raster import Window
    from xenium_assets.segmentation.bundle_nuclei import read_bundle_nuclei
    from xenium_assets.segmentation.learned import SegmenterConfig
    from xenium_assets.segmentation.training import train_segmenter

    bundle = _bench_bundle(cache, "seg_train_2048px_1500cells_crowded", 1500, 2048, seed=31, crowding=0.5)
    nuclei = read_bundle_nuclei(bundle)
    diameter_um = nuclei.diameter_px * nuclei.report.pixel_size_um
    if kind == "classical":
        return SegmenterChoice("classical", "classical", diameter_um), 0.0
    config = SegmenterConfig() if steps is None else SegmenterConfig(steps=steps)
    files = SegmenterFiles(cache / f"predict_segmenter_{config.steps}steps")
    seconds = 0.0
    if not files.card.exists():  # written last: a checkpoint without a card is an interrupted training
        height, width = nuclei.shape
        split = height * 3 // 4
        pair = nuclei.window(Window(0, 0, split, width))
        val = nuclei.window(Window(split, 0, height - split, width))
        fit = train_segmenter(
            [(pair.image, pair.labels, pair.diameter_px)],
            config,
            files.folder,
            val_pairs=[(val.image, val.labels, val.diameter_px)],
            progress=TqdmProgress(),
            description={"bench": "predict", "nucleus_diameter_um": diameter_um},
        )
        seconds = fit.seconds
    return SegmenterChoice("learned", files.folder.name, diameter_um, str(files.checkpoint)), seconds


def _predict_warm_up(threads: int) -> dict:
    """Run on each worker before the timed prediction: torch's threads set to the worker's (torch otherwise takes
    every core in each worker process; dask's workers also start with OMP_NUM_THREADS=1), and the task code and
    torch imported, as ``extract.warm_up`` loads the patch code. The models load inside the timed run (and what it
    imports is what a worker of ``predict`` imports: not Lightning)."""
    start = time.perf_counter()
    import torch

    import xenium_assets.prediction.tiles  # noqa: F401
    import xenium_assets.segmentation.learned  # noqa: F401
    import xenium_assets.training.backbone  # noqa: F401

    torch.set_num_threads(threads)
    return {
        "seconds": time.perf_counter() - start,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }


def _inference_device(model_dir: str, checkpoint: str | None) -> str:
    """Where the worker's loaded (cached) networks ran: the device of their parameters."""
    from xenium_assets.prediction import tiles

    devices = {str(next(tiles._classifier(model_dir).module.parameters()).device)}
    if checkpoint is not None:
        devices.add(str(next(tiles._learned(checkpoint).module.parameters()).device))
    return ",".join(sorted(devices))


class _StageClock:
    """A progress callback that also keeps the time of each stage's last report."""

    def __init__(self, progress) -> None:
        self.progress = progress
        self.last: dict[str, float] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        self.progress(stage, done, total)
        self.last[stage] = time.perf_counter()


_PREDICT_STAGES = {
    "transcode DAPI": "image_store",
    "segment and classify": "tiles",
    "label image": "label_image",
    "spatialdata": "pyramid_table_spatialdata",
}
"""predict_image's progress stages, by the name of the wall-clock part each one's last report closes."""


def _predict(bundle: Path, out: Path, classifier: Path, choice, workers: int, tile_px: int) -> dict:
    """``predict_image`` of the bundle's DAPI on a fresh local cluster of ``workers`` x 1 thread; the prediction,
    each worker's peak memory, and the wall seconds of its parts."""
    from xenium_assets.images.source import open_image
    from xenium_assets.parallel import dask_client, dask_runner
    from xenium_assets.prediction.run import predict_image

    source = open_image(bundle)
    with dask_client(n_workers=workers, threads_per_worker=1, lean=True) as client:
        warm = client.run(_predict_warm_up, 1)
        clock = _StageClock(TqdmProgress())
        t0, cpu0 = time.perf_counter(), time.process_time()
        with _PeakRss() as memory:
            prediction = predict_image(
                source,
                out,
                classifier,
                "bench",
                choice,
                dask_runner(client, clock),
                PredictOptions(tile_px=tile_px),
                clock,
            )
        end, main_cpu = time.perf_counter(), time.process_time() - cpu0
        devices = set(client.run(_inference_device, str(classifier), choice.checkpoint).values())
    parts, previous = {}, t0
    for stage, at in sorted(clock.last.items(), key=lambda kv: kv[1]):
        if stage in _PREDICT_STAGES:
            parts[_PREDICT_STAGES[stage]] = (at - previous, memory.max_mb_between(previous, at))
            previous = at
    parts["overview"] = (end - previous, memory.max_mb_between(previous, end))
    return {
        "prediction": prediction,
        "warmup_seconds": max(w["seconds"] for w in warm.values()),
        "torch_threads_per_worker": sorted({w["torch_threads"] for w in warm.values()}),
        "cuda": any(w["cuda"] for w in warm.values()),
        "inference_device": ",".join(sorted(devices)),
        "parts": parts,
        "peak_worker_rss_mb": memory.max_mb,
        "worker_cpu_seconds": memory.cpu_seconds,
        "main_cpu_seconds": main_cpu,
    }


def bench_predict(
    *,
    n_cells: int,
    size: int,
    small_cells: int,
    small_size: int,
    workers: int,
    segmenter: str,
    model: Path | None,
    cache: Path,
    tile_px: int = PredictOptions.tile_px,
    segmenter_steps: int | None = None,
    train_cells: int = 1500,
    train_size: int = 2048,
    train_epochs: int = 4,
) -> dict:
    """Segment and classify every nucleus of a large synthetic DAPI image (a bundle's morphology image, read as
    any image is) with ``predict_image`` on ``workers`` dask workers x 1 thread: seconds, stage seconds, nuclei a
    second, each worker's peak memory; and the peak memory on a smaller image. The classifier is ``model`` or a
    small one trained once on synthetic bundles; the segmenter ``learned`` (trained once) or ``classical``."""
    if segmenter not in ("learned", "classical"):
        raise ValueError(f"segmenter is learned or classical, not {segmenter!r}")
    cache.mkdir(parents=True, exist_ok=True)
    big = _bench_bundle(cache, f"bench_{size}px_{n_cells}cells", n_cells, size, seed=21)
    small = _bench_bundle(cache, f"bench_{small_size}px_{small_cells}cells", small_cells, small_size, seed=22)
    classifier = model if model is not None else _predict_classifier(cache, train_cells, train_size, train_epochs)
    choice, segmenter_train_seconds = _predict_segmenter(cache, segmenter, segmenter_steps)
    work = Path(tempfile.mkdtemp(prefix="xa-bench-predict-", dir=cache))
    try:
        ours = _predict(big, work / "big", classifier, choice, workers, tile_px)
        shutil.rmtree(work / "big")
        small_run = _predict(small, work / "small", classifier, choice, workers, tile_px)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    p = ours["prediction"]
    return {
        "nuclei": p.nuclei,
        "image_px": f"{p.image_px[0]}x{p.image_px[1]}",
        "true_nuclei": n_cells,
        "segmenter": choice.kind,
        "segmenter_version": choice.version,
        "nucleus_diameter_um": round(choice.nucleus_diameter_um, 2),
        "classifier": str(classifier),
        "workers": workers,
        "threads_per_worker": 1,
        "torch_threads_per_worker": ours["torch_threads_per_worker"],
        "cuda_available": ours["cuda"],
        "inference_device": ours["inference_device"],
        "tile_px": tile_px,
        "warmup_seconds": round(ours["warmup_seconds"], 1),
        "segmentation_seconds": round(p.segmentation_seconds, 1),
        "classification_seconds": round(p.classification_seconds, 1),
        "seconds": round(p.seconds, 1),
        "goal_seconds": 600,
        "nuclei_per_second": round(p.nuclei_per_second, 1),
        **{f"{k}_seconds": round(v, 1) for k, (v, _) in ours["parts"].items()},
        # CPU seconds used, all workers and this process: on a busy machine, what the run would take alone is
        # about (worker + main CPU seconds) / cores, where ``seconds`` also counts the waits for a core.
        "worker_cpu_seconds": round(ours["worker_cpu_seconds"], 1),
        "main_cpu_seconds": round(ours["main_cpu_seconds"], 1),
        "peak_worker_rss_mb": round(ours["peak_worker_rss_mb"]),
        f"peak_worker_rss_mb_{small_size}px": round(small_run["peak_worker_rss_mb"]),
        **{
            f"peak_worker_rss_mb_{k}{suffix}": round(r["parts"].get(k, (0, 0))[1])
            for k in ours["parts"]
            for suffix, r in (("", ours), (f"_{small_size}px", small_run))
        },
        "goal_peak_worker_rss_mb": 2048,
        f"nuclei_{small_size}px": small_run["prediction"].nuclei,
        f"seconds_{small_size}px": round(small_run["prediction"].seconds, 1),
        "segmenter_train_seconds": round(segmenter_train_seconds, 1),
    }
