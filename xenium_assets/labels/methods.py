"""Which method names the reference's classes: one dispatch for every caller."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from xenium_assets.labels.options import MethodOptions
from xenium_assets.labels.table import LabelError, Labelling

if TYPE_CHECKING:
    import anndata as ad


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
