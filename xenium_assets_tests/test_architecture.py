"""The house rules that hold the layers apart: the library never imports Dagster."""

from __future__ import annotations

import ast
import pkgutil
import re
from pathlib import Path

import xenium_assets
import xenium_assets.layout
from xenium_assets_tests.conftest import assert_leaves_unloaded

DAGSTER_LAYER = ("xenium_assets.defs", "xenium_assets.definitions", "xenium_assets.runs", "xenium_assets.cli")
NEEDS_DISPLAY = ("xenium_assets.viewer.app",)  # napari and Qt: tested in test_viewer


def _library_modules() -> tuple[str, ...]:
    names = [m.name for m in pkgutil.walk_packages(xenium_assets.__path__, "xenium_assets.")]
    return tuple(
        n for n in names if not n.startswith(DAGSTER_LAYER) and n not in NEEDS_DISPLAY and not n.endswith("__main__")
    )


def test_the_library_and_the_benchmark_never_import_dagster():
    modules = _library_modules()
    assert {"xenium_assets.bench", "xenium_assets.export", "xenium_assets.training.run"} <= set(modules)
    assert_leaves_unloaded(modules, ("dagster", "dagster_mlflow"))


def test_no_library_module_imports_the_dagster_layer_even_inside_a_function():
    import importlib.util

    offenders = []
    for name in _library_modules():
        source = importlib.util.find_spec(name).origin
        tree = ast.parse(Path(source).read_text())
        for node in ast.walk(tree):
            targets = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module]
            for target in targets:
                if target.split(".")[0] in ("dagster", "dagster_mlflow") or target.startswith(DAGSTER_LAYER):
                    offenders.append(f"{name}:{node.lineno} imports {target}")
    assert not offenders, offenders


FILE_NAME = re.compile(
    r"^[\w{}%*][\w{}%*/.-]*\.(arrow|ckpt|csv|h5ad|html|json|md|npy|npz|parquet|png|tar|txt|yaml|zarr)$"
)
NAMES_LIVE_IN = {"layout.py": "the project's own files", "formats.py": "the Xenium bundle's files"}


def _string_literals(tree: ast.AST):
    """Every string constant, and every f-string with its fields as ``{}``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            yield node.lineno, text


def test_file_names_live_in_the_layout_module():
    """No module but the layout (the project's files) and the format (Xenium's) spells a file's name."""
    root = Path(xenium_assets.__file__).parent
    offenders = [
        f"{path.relative_to(root)}:{line} {text!r}"
        for path in sorted(root.rglob("*.py"))
        if str(path.relative_to(root)) not in NAMES_LIVE_IN
        for line, text in _string_literals(ast.parse(path.read_text()))
        if FILE_NAME.match(text)
    ]
    assert not offenders, offenders
    layout = Path(xenium_assets.layout.__file__).read_text()
    assert "manifest.json" in layout and "index.parquet" in layout  # the test reads the names where they live


LAYERS = (
    # What everything may use: file names, writes, progress, fingerprints, figures, rasters, task runners, samples.
    {"formats", "layout", "atomic", "progress", "fingerprint", "plots", "raster", "parallel", "landing", "registry"},
    {"model_store"},  # registered models in the MLflow store, by name and version
    {"bundle"},  # reading and validating a Xenium bundle
    {"synth", "expression"},  # bundles made up; counts as AnnData
    {"patches", "images"},  # pixels: the DAPI store, polygons by tile, shards; DAPI-only images
    {"slide"},  # a slide as lazy layers for pictures and the viewer
    {"labels"},  # the label reference and each sample's labels (its overview picture draws on slide)
    {"training"},  # splits, the model, the evaluation and its report
    {"segmentation"},  # nuclei from DAPI alone (the learned segmenter trains as the classifier does)
    {"prediction"},  # a trained model applied to a DAPI-only image
    {"export"},  # a sample's results as SpatialData or Explorer cell groups
    {"viewer"},
    {"bench"},
    {"defs"},  # Dagster: the assets wire the library
    {"definitions"},
    {"runs"},  # runs started from the command line on the instance
    {"cli"},
)


def _imports_by_unit() -> dict[str, set[str]]:
    """Top-level unit (subpackage or module of xenium_assets) -> the units it imports, anywhere in its code."""
    root = Path(xenium_assets.__file__).parent
    found: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        if parts == ("__init__",) or parts == ("__main__",):
            continue
        unit = parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + (
                    [f"{node.module}.{a.name}" for a in node.names] if node.module == "xenium_assets" else []
                )
            for name in names:
                if name.startswith("xenium_assets."):
                    found.setdefault(unit, set()).add(name.split(".")[1])
        found.setdefault(unit, set())
    return found


def test_layers_import_only_downwards():
    """Each unit imports only its own layer and those below it, so the pipeline's story reads bottom-up; a new
    module must be given a layer here."""
    layer_of = {unit: i for i, units in enumerate(LAYERS) for unit in units}
    imports = _imports_by_unit()
    unplaced = sorted(set(imports) - set(layer_of))
    assert not unplaced, f"give these a layer in LAYERS: {unplaced}"
    upward = sorted(
        f"{unit} (layer {layer_of[unit]}) imports {other} (layer {layer_of[other]})"
        for unit, others in imports.items()
        for other in others
        if other in layer_of and layer_of[other] > layer_of[unit]
    )
    assert not upward, upward
