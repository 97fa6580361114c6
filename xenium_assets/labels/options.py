"""How a label reference is built and which method names its classes: plain options, light to import (the Dagster
config of label_reference takes its defaults from here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from xenium_assets.labels.table import MIN_CLASS_CELLS, file_fingerprint

MIN_SHARED_GENES = 0.9
"""A sample must have this share of the reference's genes, and the reference this share of the sample's (after
their QC, which drops a panel's genes that too few cells of a sample express)."""
VOTER_FLOOR = 200


Method = Literal["leiden", "markers", "reference", "xenium_graphclust"]
FILE_OPTIONS = ("markers_file", "reference_file", "celltypist_model")


@dataclass(frozen=True)
class MethodOptions:
    """How the reference's cells get their classes; only the fields of the chosen method matter (label_reference's
    config says what each does). ``graphclust``: each sample's instrument clusters (analysis/ CSV)."""

    method: Method = "leiden"
    resolution: float = 0.5
    markers_file: str | None = None
    margin: float = 0.1
    reference_file: str | None = None
    reference_label_key: str = "cell_type"
    celltypist_model: str | None = None
    graphclust: dict[str, str | None] = field(default_factory=dict)
    seed: int = 0

    def fingerprints(self) -> dict[str, str]:
        """The content of every file the options name (its path alone would keep a version when it is edited)."""
        paths = {name: getattr(self, name) for name in FILE_OPTIONS}
        return {name: file_fingerprint(path) for name, path in paths.items() if path and Path(path).is_file()}

    def params(self) -> dict:
        """The options that define the classes (what a version hashes)."""
        return {k: v for k, v in asdict(self).items() if k != "graphclust"}


@dataclass(frozen=True)
class ReferenceParams:
    """How big the reference is and how it integrates samples (the method's options are separate)."""

    max_cells: int = 200_000
    """Cells in the sketch the classes are built from, at most."""
    n_pcs: int = 30
    integrate: bool = True
    """Harmony across samples, and each placed sample's own shift removed; off only to see what it does."""
    n_neighbors: int = 15
    """Reference cells that vote on a placed cell's label."""
    max_voters: int = 100_000
    """Sketch cells kept to vote, at most (every class keeps at least VOTER_FLOOR, or all it has): scikit-learn's
    exact neighbour search takes about 32 s per 100,000 placed cells against 200,000 voters and 16 s against
    100,000, which give 94 % of the bone-marrow benchmark's cells the same label (docs/labels.md)."""
    min_class_cells: int = MIN_CLASS_CELLS
    """A class with fewer cells in the sketch is rare: its cells are excluded (``rare_class``)."""
    min_shared_genes: float = MIN_SHARED_GENES
    hvg_min_panel: int = 500
    """Panels with more genes than this are reduced to their n_top_genes most variable genes before PCA."""
    n_top_genes: int = 2000
    seed: int = 0
