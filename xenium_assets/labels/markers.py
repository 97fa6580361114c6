"""``markers``: score user-given marker sets (YAML: class -> genes) and take the best class.

A cell gets the best-scoring class when its score beats the runner-up by ``margin``, else
``Unassigned``. Confidence is the softmax probability of the best class over all class scores.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import yaml

from xenium_assets.labels.table import UNASSIGNED, LabelError, Labelling


def read_marker_file(path: str | Path) -> dict[str, list[str]]:
    """class -> marker genes from YAML; a clear error for anything else."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise LabelError(f"{path}: cannot read the marker file ({exc})") from exc
    if not isinstance(data, dict) or not data or not all(isinstance(v, list) and v for v in data.values()):
        raise LabelError(f"{path}: expected a YAML mapping of class -> non-empty list of genes")
    return {str(k): [str(g) for g in v] for k, v in data.items()}


def label_markers(
    cells: ad.AnnData, markers: dict[str, list[str]], *, margin: float = 0.1, temperature: float = 0.25, seed: int = 0
) -> Labelling:
    import scanpy as sc

    notes = []
    panel = set(cells.var_names)
    usable: dict[str, list[str]] = {}
    for cls, genes in markers.items():
        present = [g for g in genes if g in panel]
        missing = [g for g in genes if g not in panel]
        if missing:
            notes.append(f"{cls}: not in the panel: {', '.join(missing)}")
        if not present:
            raise LabelError(f"class {cls!r}: none of its marker genes ({', '.join(genes)}) is in the panel")
        usable[cls] = present
    classes = list(usable)
    scores = np.zeros((cells.n_obs, len(classes)))
    # scanpy draws control genes per expression bin; a 300-gene panel cannot fill its default 25 bins.
    n_bins = max(1, min(25, cells.n_vars // 10))
    for k, cls in enumerate(classes):
        ctrl = max(1, min(50, cells.n_vars - len(usable[cls])))
        sc.tl.score_genes(cells, usable[cls], ctrl_size=ctrl, n_bins=n_bins, score_name="_score", random_state=seed)
        scores[:, k] = cells.obs.pop("_score").to_numpy()
    order = np.argsort(scores, axis=1)
    best = order[:, -1]
    top = scores[np.arange(len(best)), best]
    second = scores[np.arange(len(best)), order[:, -2]] if len(classes) > 1 else np.full(len(best), -np.inf)
    labels = np.where((top - second >= margin) & (top > 0), np.array(classes, dtype=object)[best], UNASSIGNED)
    z = (scores - top[:, None]) / temperature
    confidence = 1.0 / np.exp(z).sum(axis=1)
    table = pd.DataFrame(
        [
            {"label": cls, "rank": r + 1, "gene": g, "score": np.nan}
            for cls, genes in usable.items()
            for r, g in enumerate(genes)
        ]
    )
    return Labelling(label=labels.astype(object), confidence=confidence, markers=table, notes=notes)
