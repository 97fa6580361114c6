"""The joint matrix of all samples, cluster naming by marker genes, exclusions and versioning."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

UNASSIGNED = "Unassigned"
LABEL_COLUMNS = ("sample", "cell_id", "label", "confidence", "excluded_reason", "label_version")
RANK_CELLS_PER_GROUP = 2000


class LabelError(ValueError):
    """The labelling cannot be done as configured (bad marker file, reference without shared genes...)."""


@dataclass
class Labelling:
    """What a method returns: a label and a confidence in [0, 1] per cell of the joint matrix."""

    label: np.ndarray
    confidence: np.ndarray
    markers: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Top genes per label (columns: label, rank, gene, score)."""
    notes: list[str] = field(default_factory=list)


def joint_matrix(samples: dict[str, ad.AnnData]) -> ad.AnnData:
    """Concatenate QC'd samples (log-normalised X, raw ``counts`` layer) on their shared genes.

    obs names become 'sample/cell_id', because cell ids repeat across slides.
    """
    if not samples:
        raise LabelError("no sample has a QC'd matrix: materialize qc_adata first")
    parts = {}
    for name, adata in samples.items():
        cell_ids = adata.obs_names.astype(str)
        obs = pd.DataFrame({"sample": name, "cell_id": cell_ids}, index=name + "/" + cell_ids)
        parts[name] = ad.AnnData(
            X=adata.X,
            obs=obs,
            var=pd.DataFrame(index=adata.var_names),
            obsm={"spatial": adata.obsm["spatial"]},
            layers={"counts": adata.layers["counts"]} if "counts" in adata.layers else None,
        )
    joint = ad.concat(parts.values(), join="inner", merge="same")
    if joint.n_vars < 2:
        raise LabelError(f"samples {', '.join(samples)} share {joint.n_vars} genes: labels cannot be made jointly")
    joint.obs["sample"] = pd.Categorical(joint.obs["sample"])
    return joint


def rank_markers(joint: ad.AnnData, groups: np.ndarray, n_top: int = 5, seed: int = 0) -> pd.DataFrame:
    """Top marker genes per group (Wilcoxon), on at most 2,000 cells per group for speed."""
    import scanpy as sc

    frame = pd.DataFrame({"group": groups.astype(str)})
    frame = frame[frame["group"] != UNASSIGNED]
    if frame["group"].nunique() < 2:
        return pd.DataFrame(columns=["label", "rank", "gene", "score"])
    take = frame.sample(frac=1.0, random_state=seed).groupby("group").head(RANK_CELLS_PER_GROUP).index.to_numpy()
    sub = joint[take].copy()
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
    joint: ad.AnnData, labelling: Labelling, *, min_confidence: float, min_class_cells: int, version: str
) -> pd.DataFrame:
    """The labels table: every cell keeps its label; excluded ones say why (unassigned, low confidence, rare)."""
    label = pd.Series(labelling.label, dtype=object)
    confidence = pd.Series(labelling.confidence, dtype=float)
    reason = pd.Series("", index=label.index, dtype=object)
    reason[label == UNASSIGNED] = "unassigned"
    reason[(reason == "") & (confidence < min_confidence)] = "low_confidence"
    sizes = label[reason == ""].value_counts()
    rare = sizes.index[sizes < min_class_cells]
    reason[(reason == "") & label.isin(rare)] = "rare_class"
    table = pd.DataFrame(
        {
            "sample": joint.obs["sample"].astype(str).to_numpy(),
            "cell_id": joint.obs["cell_id"].astype(str).to_numpy(),
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
