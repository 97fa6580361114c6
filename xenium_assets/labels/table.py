"""The labels table, what a labelling method returns, class names from marker genes, and versions."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # the Dagster layer imports this module: anndata is loaded only where cells are
    import anndata as ad

UNASSIGNED = "Unassigned"
LABEL_COLUMNS = ("sample", "cell_id", "label", "confidence", "excluded_reason", "label_version")
RANK_CELLS_PER_GROUP = 2000
MIN_CLASS_CELLS = 20
"""A class with fewer cells is left out: rare in the reference (its cells excluded), or untrainable."""


class LabelError(ValueError):
    """The labelling cannot be done as configured (bad marker file, reference of another panel...)."""


@dataclass
class Labelling:
    """What a method returns: a label and a confidence in [0, 1] per cell it was given."""

    label: np.ndarray
    confidence: np.ndarray
    markers: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Top genes per label (columns: label, rank, gene, score)."""
    notes: list[str] = field(default_factory=list)


def rank_markers(cells: ad.AnnData, groups: np.ndarray, n_top: int = 5, seed: int = 0) -> pd.DataFrame:
    """Top marker genes per group (Wilcoxon), on at most 2,000 cells per group for speed."""
    import scanpy as sc

    frame = pd.DataFrame({"group": groups.astype(str)})
    frame = frame[frame["group"] != UNASSIGNED]
    if frame["group"].nunique() < 2:
        return pd.DataFrame(columns=["label", "rank", "gene", "score"])
    take = frame.sample(frac=1.0, random_state=seed).groupby("group").head(RANK_CELLS_PER_GROUP).index.to_numpy()
    sub = cells[take].copy()
    sub.obs["group"] = pd.Categorical(frame.loc[take, "group"].to_numpy())
    sc.tl.rank_genes_groups(sub, "group", method="wilcoxon", n_genes=n_top)
    names = pd.DataFrame(sub.uns["rank_genes_groups"]["names"])
    scores = pd.DataFrame(sub.uns["rank_genes_groups"]["scores"])
    rows = [
        {"label": g, "rank": r + 1, "gene": names[g][r], "score": float(scores[g][r])}
        for g in names.columns
        for r in range(len(names))
    ]
    return pd.DataFrame(rows)


def name_groups(groups: np.ndarray, markers: pd.DataFrame, n_genes: int = 2) -> tuple[np.ndarray, pd.DataFrame]:
    """Rename groups (cluster ids) by their top marker genes, e.g. '3' -> 'CD3E+CD3D'; names stay unique."""
    mapping: dict[str, str] = {}
    for group, top in markers.sort_values("rank").groupby("label"):
        base = "+".join(top["gene"].head(n_genes))
        name, k = base, 2
        while name in mapping.values():
            name, k = f"{base}_{k}", k + 1
        mapping[str(group)] = name
    groups = pd.Series(groups.astype(str))
    labels = groups.map(mapping).fillna(groups).to_numpy(dtype=object)
    return labels, markers.assign(label=markers["label"].astype(str).map(mapping))


def finalise(
    sample: str,
    cell_ids: np.ndarray,
    labelling: Labelling,
    *,
    min_confidence: float,
    rare_classes: set[str] | frozenset[str],
    version: str,
) -> pd.DataFrame:
    """One sample's labels table: every cell keeps its label; excluded ones say why (unassigned, low confidence,
    or a class the reference holds too few cells of)."""
    label = pd.Series(labelling.label, dtype=object)
    confidence = pd.Series(labelling.confidence, dtype=float)
    reason = pd.Series("", index=label.index, dtype=object)
    reason[label == UNASSIGNED] = "unassigned"
    reason[(reason == "") & (confidence < min_confidence)] = "low_confidence"
    reason[(reason == "") & label.isin(list(rare_classes))] = "rare_class"
    table = pd.DataFrame(
        {
            "sample": sample,
            "cell_id": np.asarray(cell_ids).astype(str),
            "label": label.to_numpy(),
            "confidence": confidence.to_numpy(),
            "excluded_reason": reason.to_numpy(),
            "label_version": version,
        }
    )
    return table[list(LABEL_COLUMNS)]


def label_version(method: str, params: dict, inputs: dict) -> str:
    """A short hash of the method, its parameters and the inputs' fingerprints: the labels' identity."""
    blob = json.dumps({"method": method, "params": params, "inputs": inputs}, sort_keys=True, default=str)
    return f"{method}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


def file_fingerprint(path: str | Path) -> str:
    """sha1 of a file's bytes: a marker list or reference edited in place must change the label version."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def class_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Usable cells per label (rows) and sample (columns), plus excluded cells per reason."""
    usable = table[table["excluded_reason"] == ""]
    counts = pd.crosstab(usable["label"], usable["sample"])
    excluded = table[table["excluded_reason"] != ""]
    if len(excluded):
        ex = pd.crosstab("excluded: " + excluded["excluded_reason"], excluded["sample"])
        counts = pd.concat([counts, ex]).fillna(0).astype(int)
    return counts
