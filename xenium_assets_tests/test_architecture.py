"""The house rules that hold the layers apart: the library never imports Dagster."""

from __future__ import annotations

import pkgutil
from pathlib import Path

import xenium_assets
from xenium_assets_tests.conftest import assert_leaves_unloaded

DAGSTER_LAYER = ("xenium_assets.defs", "xenium_assets.definitions", "xenium_assets.cli")
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
    import ast
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
