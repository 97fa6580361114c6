"""Shared fixtures: small synthetic bundles built once per test run, and an isolated project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from xenium_assets.synth import SynthParams, generate_bundle, truth_labels

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("XENIUM_ASSETS_SHARED", REPO.parent / "shared"))
REAL = SHARED / "real_xenium"
JURKAT = REAL / "sfe_jurkat_raji_toy"
BONE_MARROW_H5 = REAL / "xenium_hbonemarrow_cfm" / "cell_feature_matrix.h5"
# The Jurkat/Raji crop was read at pyramid level 4 and cropped to x, y in [1000, 1400] µm (SOURCE.md).
JURKAT_PIXEL_SIZE = 400 / 237
JURKAT_ORIGIN = (1000.0, 1000.0)

SMALL = dict(n_cells=600, width=1536, height=1536)
VERSIONS = ("1", "1.7", "2", "3", "4")

needs_shared = pytest.mark.skipif(
    not REAL.is_dir(), reason=f"real Xenium fixtures not found at {REAL} (../shared is absent on this machine)"
)


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``bundles(version="3", **params)`` -> path of a synthetic bundle, generated once per session."""
    root = tmp_path_factory.mktemp("bundles")
    made: dict[tuple, Path] = {}

    def get(version: str = "3", **overrides) -> Path:
        params = {**SMALL, "seed": 7, **overrides, "version": version}
        key = tuple(sorted(params.items()))
        if key not in made:
            out = root / f"b{len(made)}_v{version.replace('.', '_')}"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                generate_bundle(out, SynthParams(**params))
            made[key] = out
        return made[key]

    return get


@pytest.fixture
def bundle_copy(bundles: Callable[..., Path], tmp_path: Path) -> Callable[..., Path]:
    """A private, writable copy of a session bundle, for tests that break files."""

    def copy(version: str = "3", **overrides) -> Path:
        dst = tmp_path / f"copy_v{version.replace('.', '_')}"
        shutil.copytree(bundles(version, **overrides), dst)
        return dst

    return copy


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An isolated project data folder and DAGSTER_HOME holding the repository's dagster.yaml."""
    data = tmp_path / "data"
    home = data / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("XENIUM_ASSETS_DATA", str(data))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    yield data


@pytest.fixture(scope="module")
def screen():
    """A display napari can draw on, or a skip that says what is missing."""
    pytest.importorskip("napari", reason="napari is not installed: pip install -e '.[viewer]'")
    from xenium_assets.viewer.display import DisplayUnavailable, qt_problem, virtual_display

    try:
        with virtual_display() as display:
            problem = qt_problem()
            if problem:
                pytest.skip(problem)
            yield display
    except DisplayUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def extracted(bundles: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory):
    """The v3 session bundle through the patch pipeline, every tile extracted: (bundle, root, manifest, store,
    tasks, results). Session-scoped: test_dapi_store, test_extract and test_shards share it (read-only)."""
    from xenium_assets.patches.extract import extract_tile
    from xenium_assets_tests.patch_pipeline import make_tasks, prepare

    bundle = bundles("3")
    root = tmp_path_factory.mktemp("patches")
    manifest, store = prepare(bundle, root, "s")
    tasks = make_tasks(manifest, store, root, root / "shards")
    results = [extract_tile(t) for t in tasks]
    return bundle, root, manifest, store, tasks, results


def build_shards(bundle: Path, root: Path, sample: str) -> Path:
    """raw manifest -> DAPI store -> tile geometry -> shards of every tile; returns the shards folder."""
    import pyarrow.parquet as pq

    from xenium_assets.bundle.manifest import write_manifest
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
    problems = pq.read_table(manifest.cell_problems).to_pandas()
    tasks = tile_tasks(
        sample,
        store,
        root / "geometry",
        problems[problems["kind"] == "invalid"],
        list(TILE_KEYS),
        root / "shards",
        spec,
    )
    for task in tasks:
        extract_tile(task)
    return root / "shards"


def truth_keys(bundles: dict[str, Path]):
    """The generator's true classes of the samples' cells as usable labels (key, label, confidence): what
    training joins to the shards, without clustering."""
    import pandas as pd

    from xenium_assets.labels.store import usable_labels

    return usable_labels(pd.concat([truth_labels(bundle, sample) for sample, bundle in bundles.items()]))


def assert_leaves_unloaded(modules: tuple[str, ...], unwanted: tuple[str, ...], then: str = "") -> None:
    """Import ``modules`` in a fresh interpreter (and run the statements ``then``) and fail, naming them, if any of
    ``unwanted`` came with them."""
    code = (
        f"import sys, {', '.join(modules)};"
        + (f"{then};" if then else "")
        + f"bad = [m for m in {unwanted!r} if m in sys.modules];"
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-500:]


# The three modules that take most of the suite's time (one process, 2026-12-02: training 397 s, the running
# instance 346 s, the CLI with its demo 300 s, everything else 330 s). `make test` runs modules on two
# pytest-xdist workers, whole (module fixtures are built once), in collection order: these go first, so the
# other modules fill the worker that is not busy with them instead of starting one of them last.
FIRST = ("test_training.py", "test_instance.py", "test_cli.py")


STRICT_SKIPS = "XENIUM_ASSETS_STRICT_SKIPS"
"""Set by .ci/run: a skip for any reason but the documented ones fails the run (in CI ../shared, Xvfb and napari
are present, so the real-data and viewer tests must run)."""
DOCUMENTED_SKIPS = ("O_DIRECT",)
"""Skips CI accepts: a filesystem (tmpfs) that refuses O_DIRECT reads."""


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not os.environ.get(STRICT_SKIPS):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    undocumented = [r for r in skipped if not any(reason in str(r.longrepr) for reason in DOCUMENTED_SKIPS)]
    if undocumented:
        for report in undocumented:
            print(f"undocumented skip ({STRICT_SKIPS} is set): {report.nodeid}: {report.longrepr}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return FIRST.index(name) if name in FIRST else len(FIRST)

    items.sort(key=rank)  # stable: tests keep their order within a module
