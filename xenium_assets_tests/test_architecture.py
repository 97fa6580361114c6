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
