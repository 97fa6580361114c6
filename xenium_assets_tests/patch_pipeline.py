"""The patch pipeline as the patches tests run it: raw manifest -> DAPI store -> tile geometry -> tile tasks, and
the samples of a folder of shards (used by test_dapi_store, test_extract, test_shards and the ``extracted``
fixture in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import webdataset as wds

from xenium_assets.bundle.manifest import write_manifest
from xenium_assets.bundle.validate import inspect_bundle
from xenium_assets.parallel import thread_runner
from xenium_assets.patches import grid
from xenium_assets.patches.dapi_store import transcode_dapi
from xenium_assets.patches.extract import TileTask, tile_tasks
from xenium_assets.patches.geometry import split_by_tile

SPEC = grid.PatchSpec()


def prepare(bundle: Path, root: Path, sample: str, **inspect_kwargs):
    manifest = write_manifest(inspect_bundle(bundle, **inspect_kwargs), sample, root / "raw")
    store = transcode_dapi(manifest, root / "dapi", SPEC.pixel_size_um, thread_runner(2))
    split_by_tile(manifest, SPEC, root / "geometry")
    return manifest, store


def make_tasks(manifest, store, root: Path, out: Path, **kwargs) -> list[TileTask]:
    problems = pq.read_table(manifest.cell_problems).to_pandas()
    problems = problems[problems["kind"] == "invalid"]
    return tile_tasks(manifest.sample, store, root / "geometry", problems, list(grid.TILE_KEYS), out, SPEC, **kwargs)


def read_samples(folder: Path) -> list[dict]:
    files = sorted(str(p) for p in folder.glob("*/shard-*.tar"))
    return list(wds.WebDataset(files, shardshuffle=False, empty_check=False).decode())
