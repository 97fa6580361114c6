"""The label reference: classes built once from a sketch of the samples, and every cell placed in it.

Building: a bounded sketch of the chosen samples (``sketch.py``) -> their counts normalised to one
target -> PCA -> Harmony across samples (``integrate.py``) -> classes by the chosen method on the
integrated embedding, named by marker genes. Classes with fewer than ``min_class_cells`` cells in the
sketch are marked rare. What placing needs is kept: the genes, the normalisation target, the PCA
loadings, Harmony's soft-cluster summaries and the sketch's integrated embedding with its classes.

Placing (per sample, any time later): the sample's counts on the reference's genes -> the same
normalisation and projection -> its own shift removed against the soft clusters -> the k nearest
reference cells vote; the label is the majority class and the confidence its share of the votes. Only
the reference and the sample's own cells enter, so a sample's labels never change when another sample
is added, and a class has one name in every sample.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from xenium_assets.atomic import atomic_dir
from xenium_assets.labels.integrate import SoftClusters, harmonize, same_sample_share
from xenium_assets.labels.matrix import SampleCounts, log_normalise, on_genes
from xenium_assets.labels.methods import label_cells
from xenium_assets.labels.options import VOTER_FLOOR, MethodOptions, ReferenceParams
from xenium_assets.labels.sketch import Sketch, sketch
from xenium_assets.labels.table import UNASSIGNED, LabelError, Labelling, finalise
from xenium_assets.layout import ReferenceFiles, read_json
from xenium_assets.progress import Progress, no_progress


@dataclass
class LabelReference:
    """A built reference: everything that places new cells in it, and the facts a report needs."""

    version: str
    genes: list[str]
    pca_genes: np.ndarray
    """Boolean mask over ``genes``: those the PCA uses."""
    target_sum: float
    mean: np.ndarray
    loadings: np.ndarray
    clusters: SoftClusters | None
    embedding: np.ndarray
    """The integrated embedding (cells, n_pcs) of the sketch cells that vote."""
    codes: np.ndarray
    """Each voter's class, as an index into ``classes``."""
    classes: list[str]
    rare_classes: list[str]
    params: ReferenceParams = field(default_factory=ReferenceParams)
    info: dict = field(default_factory=dict)
    """Method, options, samples, cells drawn per sample, notes (reference.json)."""

    def check_panel(self, sample: str, genes: pd.Index) -> list[str]:
        """Notes on genes the sample lacks or adds; a LabelError when the sample was measured with another panel."""
        ours = pd.Index(self.genes)
        missing = ours.difference(genes)
        extra = genes.difference(ours)
        need = self.params.min_shared_genes
        if len(missing) > (1 - need) * len(ours) or len(extra) > (1 - need) * len(genes):
            raise LabelError(
                f"sample {sample!r} lacks {len(missing):,} of the reference's {len(ours):,} genes and has "
                f"{len(extra):,} it does not (e.g. {', '.join(list(missing[:3]) + list(extra[:3]))}): it was measured "
                f"with another panel than reference {self.version}; build a reference for that panel "
                "(label_reference with samples of that panel)"
            )
        notes = []
        if len(missing):
            notes.append(f"{len(missing)} reference genes not in {sample} after its QC count as zero")
        if len(extra):
            notes.append(f"{len(extra)} genes of {sample} are not in the reference and are not used")
        return notes

    def embed(self, counts: sp.csr_matrix, *, correct: bool = True) -> np.ndarray:
        """The integrated embedding of cells given as raw counts on ``genes`` (one sample: one shift removed)."""
        x = log_normalise(counts, self.target_sum)[:, self.pca_genes]
        z = np.asarray(x @ self.loadings, dtype=np.float64) - self.mean @ self.loadings
        if correct and self.clusters is not None:
            z = self.clusters.correct(z)
        return z.astype(np.float32)

    def vote(self, embedding: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each cell's majority class among its nearest reference cells, and that class's share of the votes."""
        from sklearn.neighbors import NearestNeighbors

        k = min(self.params.n_neighbors, len(self.embedding))
        index = NearestNeighbors(n_neighbors=k).fit(self.embedding)
        label, share = np.zeros(len(embedding), dtype=np.int64), np.zeros(len(embedding))
        n_classes = len(self.classes)
        for start in range(0, len(embedding), 50_000):  # bounded memory of the neighbour lists
            _, idx = index.kneighbors(embedding[start : start + 50_000])
            flat = np.repeat(np.arange(len(idx)) * n_classes, k) + self.codes[idx].ravel()
            votes = np.bincount(flat, minlength=len(idx) * n_classes).reshape(len(idx), n_classes)
            label[start : start + len(idx)] = votes.argmax(axis=1)
            share[start : start + len(idx)] = votes.max(axis=1) / k
        return label, share

    def place(self, counts: SampleCounts) -> tuple[Labelling, np.ndarray]:
        """Labels and confidences of one sample's cells, and their integrated embedding."""
        notes = self.check_panel(counts.sample, counts.genes)
        embedding = self.embed(on_genes(counts, pd.Index(self.genes)), correct=self.params.integrate)
        codes, share = self.vote(embedding)
        labels = np.asarray(self.classes, dtype=object)[codes]
        return Labelling(label=labels, confidence=share, notes=notes), embedding

    def save(self, folder: Path, cells: pd.DataFrame, markers: pd.DataFrame) -> None:
        """Write the reference into ``folder`` (atomically: complete or absent)."""
        arrays = {
            "pca_genes": self.pca_genes,
            "mean": self.mean,
            "loadings": self.loadings,
            "embedding": self.embedding,
            "codes": self.codes,
        }
        if self.clusters is not None:
            arrays |= {
                "centroids": self.clusters.centroids,
                "cluster_weights": self.clusters.weights,
                "cluster_sums": self.clusters.sums,
            }
        card = {
            "version": self.version,
            "genes": self.genes,
            "target_sum": self.target_sum,
            "classes": self.classes,
            "rare_classes": self.rare_classes,
            "params": asdict(self.params),
            "sigma": self.clusters.sigma if self.clusters is not None else None,
            **self.info,
        }
        with atomic_dir(folder, overwrite=True) as tmp:
            files = ReferenceFiles(tmp)
            np.savez(files.arrays, **arrays)
            files.card.write_text(json.dumps(card, indent=2, default=str))
            cells.to_parquet(files.cells, index=False)
            markers.to_csv(files.markers, index=False)

    @classmethod
    def load(cls, folder: Path) -> LabelReference:
        files = ReferenceFiles(Path(folder))
        if not files.card.exists():
            raise LabelError(f"{folder}: no label reference here; materialize label_reference")
        card = read_json(files.card)
        with np.load(files.arrays) as arrays:
            clusters = (
                SoftClusters(arrays["centroids"], arrays["cluster_weights"], arrays["cluster_sums"], card["sigma"])
                if "centroids" in arrays
                else None
            )
            data = {k: arrays[k] for k in ("pca_genes", "mean", "loadings", "embedding", "codes")}
        known = {"version", "genes", "target_sum", "classes", "rare_classes", "params", "sigma"}
        return cls(
            version=card["version"],
            genes=card["genes"],
            target_sum=card["target_sum"],
            clusters=clusters,
            classes=card["classes"],
            rare_classes=card["rare_classes"],
            params=ReferenceParams(**card["params"]),
            info={k: v for k, v in card.items() if k not in known},
            **data,
        )


def label_sample(
    reference: LabelReference, counts: SampleCounts, *, min_confidence: float
) -> tuple[pd.DataFrame, list]:
    """One sample's labels table (every cell; excluded ones say why), and notes on its genes."""
    labelling, _ = reference.place(counts)
    table = finalise(
        counts.sample,
        counts.cell_ids,
        labelling,
        min_confidence=min_confidence,
        rare_classes=set(reference.rare_classes),
        version=reference.version,
    )
    return table, labelling.notes


@dataclass
class BuiltReference:
    """A reference and what was learnt building it: its cells (AnnData, for pictures) and the method's output."""

    reference: LabelReference
    cells: ad.AnnData
    labelling: Labelling

    def cells_table(self) -> pd.DataFrame:
        """The sketch's cells: sample, cell id, class and the method's confidence."""
        return pd.DataFrame(
            {
                "sample": self.cells.obs["sample"].astype(str).to_numpy(),
                "cell_id": self.cells.obs["cell_id"].astype(str).to_numpy(),
                "label": self.labelling.label,
                "confidence": self.labelling.confidence,
            }
        )


def voters(codes: np.ndarray, max_cells: int, seed: int) -> np.ndarray:
    """Sorted indices of at most about ``max_cells`` sketch cells, drawn per class in proportion to its size but
    at least VOTER_FLOOR (or all) of each, so that a rare class still wins its own cells' votes."""
    if len(codes) <= max_cells:
        return np.arange(len(codes))
    rng = np.random.default_rng(seed)
    counts = np.bincount(codes)
    quota = np.minimum(counts, np.maximum(np.round(max_cells * counts / len(codes)), VOTER_FLOOR)).astype(np.int64)
    keep = [rng.choice(np.flatnonzero(codes == c), quota[c], replace=False) for c in range(len(counts)) if quota[c]]
    return np.sort(np.concatenate(keep))


def _pca_genes(drawn: Sketch, x: sp.csr_matrix, params: ReferenceParams) -> np.ndarray:
    """All genes of a small panel; the most variable ones (seurat_v3 on counts, per sample) of a large one."""
    if len(drawn.genes) <= params.hvg_min_panel:
        return np.ones(len(drawn.genes), dtype=bool)
    import scanpy as sc

    tmp = ad.AnnData(X=x, obs=pd.DataFrame({"sample": drawn.samples}), layers={"counts": drawn.counts})
    tmp.var_names = drawn.genes
    sc.pp.highly_variable_genes(
        tmp, flavor="seurat_v3", layer="counts", n_top_genes=params.n_top_genes, batch_key="sample"
    )
    return tmp.var["highly_variable"].to_numpy()


def build_reference(
    paths: dict[str, Path],
    options: MethodOptions,
    params: ReferenceParams,
    version: str,
    *,
    progress: Progress = no_progress,
) -> BuiltReference:
    """Classes from a sketch of ``paths`` (sample -> QC'd .h5ad), integrated across samples, and what places
    new cells in them."""
    drawn = sketch(paths, params.max_cells, min_shared=params.min_shared_genes, seed=params.seed, progress=progress)
    n = len(drawn.cell_ids)
    progress("reference", 0, 4)
    total = np.asarray(drawn.counts.sum(axis=1)).ravel()
    target_sum = float(np.median(total[total > 0])) if (total > 0).any() else 1.0
    x = log_normalise(drawn.counts, target_sum)
    pca_genes = _pca_genes(drawn, x, params)
    xp = x[:, pca_genes]
    n_pcs = min(params.n_pcs, int(pca_genes.sum()) - 1, n - 1)
    if n_pcs < 2:
        raise LabelError(f"{n} cells x {int(pca_genes.sum())} genes: too few to build a reference")
    from sklearn.decomposition import PCA

    # From the genes' covariance (G x G): the sparse matrix is never made dense.
    pca = PCA(n_pcs, svd_solver="covariance_eigh").fit(xp)
    mean, loadings = pca.mean_, pca.components_.T
    raw = np.asarray(xp @ loadings) - mean @ loadings
    progress("reference", 1, 4)
    if params.integrate:
        embedding, clusters = harmonize(raw, drawn.samples, seed=params.seed)
    else:
        embedding, clusters = raw.astype(np.float32), None
    progress("reference", 2, 4)
    keys = [f"{s}/{c}" for s, c in zip(drawn.samples, drawn.cell_ids, strict=True)]
    cells = ad.AnnData(
        X=x,
        obs=pd.DataFrame({"sample": pd.Categorical(drawn.samples), "cell_id": drawn.cell_ids}, index=keys),
        var=pd.DataFrame(index=drawn.genes),
        layers={"counts": drawn.counts},
        obsm={"X_integrated": embedding, "X_pca": raw.astype(np.float32)},
    )
    labelling = label_cells(cells, options)
    progress("reference", 3, 4)
    classes = sorted(set(labelling.label) - {UNASSIGNED}) + ([UNASSIGNED] if UNASSIGNED in labelling.label else [])
    codes = pd.Categorical(labelling.label, categories=classes).codes.astype(np.int16)
    sizes = pd.Series(labelling.label).value_counts()
    rare = sorted(c for c in classes if c != UNASSIGNED and sizes.get(c, 0) < params.min_class_cells)
    vote = voters(codes, params.max_voters, params.seed)
    mixing = {}
    if len(paths) > 1:  # how far each sample's cells of a class stay apart, before and after integration
        raw_share, mixed = same_sample_share(raw, drawn.samples, labelling.label, seed=params.seed)
        mixing = {
            "raw": raw_share,
            "integrated": same_sample_share(embedding, drawn.samples, labelling.label, seed=params.seed)[0],
            "if_mixed": mixed,
        }
    reference = LabelReference(
        version=version,
        genes=drawn.genes,
        pca_genes=pca_genes,
        target_sum=target_sum,
        mean=mean,
        loadings=loadings,
        clusters=clusters,
        embedding=embedding[vote],
        codes=codes[vote],
        classes=classes,
        rare_classes=rare,
        params=params,
        info={
            "method": options.method,
            "options": options.params(),
            "samples": list(paths),
            "sample_cells": drawn.sizes,
            "sketch_cells": drawn.drawn(),
            "class_cells": {c: int(sizes.get(c, 0)) for c in classes},
            "voters": len(vote),
            "same_sample_neighbours": mixing,
            "notes": labelling.notes,
        },
    )
    progress("reference", 4, 4)
    return BuiltReference(reference, cells, labelling)
