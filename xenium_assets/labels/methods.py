"""Which method names the reference's classes, and its options: one dispatch for every caller."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import anndata as ad

from xenium_assets.labels.table import LabelError, Labelling, file_fingerprint

Method = Literal["leiden", "markers", "reference", "xenium_graphclust"]
FILE_OPTIONS = ("markers_file", "reference_file", "celltypist_model")


@dataclass(frozen=True)
class MethodOptions:
    """How the reference's cells get their classes. Only the fields of the chosen method matter."""

    method: Method = "leiden"
    resolution: float = 0.5
    """leiden: higher gives more, smaller clusters."""
    markers_file: str | None = None
    """markers: YAML mapping class -> marker genes."""
    margin: float = 0.1
    """markers: how much the best class score must beat the runner-up."""
    reference_file: str | None = None
    """reference: an annotated .h5ad (log-normalised or raw counts) to transfer labels from with ingest."""
    reference_label_key: str = "cell_type"
    celltypist_model: str | None = None
    """reference: a local CellTypist model file, used instead of reference_file."""
    graphclust: dict[str, str | None] = field(default_factory=dict)
    """xenium_graphclust: each sample's instrument clusters (analysis/ CSV), by sample."""
    seed: int = 0

    def fingerprints(self) -> dict[str, str]:
        """The content of every file the options name (its path alone would keep a version when it is edited)."""
        paths = {name: getattr(self, name) for name in FILE_OPTIONS}
        return {name: file_fingerprint(path) for name, path in paths.items() if path and Path(path).is_file()}

    def params(self) -> dict:
        """The options that define the classes (what a version hashes)."""
        return {k: v for k, v in asdict(self).items() if k != "graphclust"}


def label_cells(cells: ad.AnnData, options: MethodOptions) -> Labelling:
    """Classes of ``cells`` (the reference's: log-normalised X, ``obsm['X_integrated']``, obs sample / cell_id)."""
    if options.method == "leiden":
        from xenium_assets.labels.leiden import label_leiden

        return label_leiden(cells, resolution=options.resolution, seed=options.seed)
    if options.method == "markers":
        from xenium_assets.labels.markers import label_markers, read_marker_file

        if not options.markers_file:
            raise LabelError("method 'markers' needs markers_file (YAML: class -> genes)")
        return label_markers(cells, read_marker_file(options.markers_file), margin=options.margin, seed=options.seed)
    if options.method == "reference":
        from xenium_assets.labels.annotated import label_annotated, label_celltypist

        if options.celltypist_model:
            return label_celltypist(cells, options.celltypist_model, seed=options.seed)
        if not options.reference_file:
            raise LabelError("method 'reference' needs reference_file (.h5ad) or celltypist_model")
        return label_annotated(cells, options.reference_file, options.reference_label_key, seed=options.seed)
    if options.method == "xenium_graphclust":
        from xenium_assets.labels.graphclust import label_graphclust

        return label_graphclust(
            cells, {s: Path(p) if p else None for s, p in options.graphclust.items()}, seed=options.seed
        )
    raise LabelError(f"unknown method {options.method!r}: choose leiden, markers, reference or xenium_graphclust")
