"""A bounded sketch of many samples: at most ``max_cells`` cells, every sample and rare population kept.

The label reference is built from a sketch, not from every cell: leiden on 10^6 cells does not fit on
a small machine, and classes need far fewer cells than that. Samples get equal shares of the budget
(a small sample gives all its cells, the rest goes to the larger ones), so no sample dominates the
classes. Within a sample the draw is stratified over k-means groups of the sample's own PCA: each group
keeps up to ``floor`` cells and the rest of its share in proportion to its size. A population of a few
hundred cells in a 10^5-cell sample thus survives a 1 % draw, which a uniform draw would thin to a handful.
Samples are read one at a time, so memory follows the sketch, not the project.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from xenium_assets.labels.matrix import on_genes, read_counts, read_genes
from xenium_assets.labels.table import LabelError
from xenium_assets.progress import Progress, no_progress

GROUPS = 50
FLOOR = 50
GROUP_PCS = 20


def shared_genes(paths: dict[str, Path], min_shared: float) -> tuple[list[str], dict[str, int]]:
    """Genes every sample has after its QC (in the first sample's order), and each sample's cell count. Samples of
    different panels (a sample keeping less than ``min_shared`` of its genes in common) are refused: one reference
    per panel, never one built on what two panels happen to share."""
    shared, genes_of, sizes = None, {}, {}
    for sample, path in paths.items():
        genes_of[sample], sizes[sample] = read_genes(path)
        shared = genes_of[sample] if shared is None else shared[shared.isin(genes_of[sample])]
    if shared is None:
        raise LabelError("no sample has a QC'd matrix: materialize qc_adata first")
    if len(shared) < 2 or any(len(shared) < min_shared * len(g) for g in genes_of.values()):
        counts = ", ".join(f"{s}: {len(g):,}" for s, g in genes_of.items())
        raise LabelError(
            f"the samples share only {len(shared):,} genes ({counts}): they were measured with different panels; "
            "build one reference per panel (label_reference's samples)"
        )
    return list(shared), sizes


def allocate(sizes: dict[str, int], max_cells: int) -> dict[str, int]:
    """Cells to draw per sample: equal shares of ``max_cells``, a small sample's unused share going to the others."""
    left, budget = dict(sizes), max_cells
    share: dict[str, int] = {}
    for sample in sorted(sizes, key=sizes.get):
        take = min(sizes[sample], budget // len(left))
        share[sample] = take
        budget -= take
        del left[sample]
    return {s: share[s] for s in sizes}


def _quota(counts: np.ndarray, n: int) -> np.ndarray:
    """Cells to draw from each group, ``n`` in all: up to a floor from each, the rest in proportion to size, the
    last few to the groups with the largest remainders that still have cells."""
    floor = np.minimum(counts, max(1, min(FLOOR, n // len(counts))))
    exact = max(n - floor.sum(), 0) * counts / counts.sum()
    quota = floor + np.minimum(counts - floor, np.floor(exact).astype(np.int64))
    remainder = exact - np.floor(exact)
    while quota.sum() < n:
        spare = np.flatnonzero(quota < counts)
        best = spare[np.argsort(-remainder[spare], kind="stable")][: n - quota.sum()]
        quota[best] += 1
        remainder[best] = 0
    return quota


def stratified_draw(embedding: np.ndarray | None, n: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` of ``size`` cells, stratified over k-means groups of ``embedding`` (uniform if the
    sample has no embedding)."""
    rng = np.random.default_rng(seed)
    if n >= size:
        return np.arange(size)
    if embedding is None or size < 4 * GROUPS:
        return np.sort(rng.choice(size, n, replace=False))
    from sklearn.cluster import MiniBatchKMeans

    k = min(GROUPS, size // 20)
    groups = MiniBatchKMeans(k, random_state=seed, n_init=3, batch_size=4096).fit_predict(
        np.asarray(embedding[:, :GROUP_PCS], dtype=np.float32)
    )
    counts = np.bincount(groups, minlength=k)
    quota = _quota(counts, n)
    order = rng.permutation(size)
    rank = np.empty(size, dtype=np.int64)  # each cell's position among its group's cells, in random order
    by_group = order[np.argsort(groups[order], kind="stable")]
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    rank[by_group] = np.arange(size) - np.repeat(starts, counts)
    return np.flatnonzero(rank < quota[groups])


@dataclass
class Sketch:
    """The drawn cells: their sample and id, raw counts on the shared genes, and every sample's size."""

    samples: np.ndarray
    cell_ids: np.ndarray
    genes: list[str]
    counts: sp.csr_matrix
    sizes: dict[str, int]

    def drawn(self) -> dict[str, int]:
        """Cells drawn per sample."""
        names, counts = np.unique(self.samples, return_counts=True)
        return dict(zip(names.tolist(), counts.tolist(), strict=True))


def sketch(
    paths: dict[str, Path],
    max_cells: int,
    *,
    min_shared: float,
    seed: int = 0,
    progress: Progress = no_progress,
) -> Sketch:
    """At most ``max_cells`` cells of the samples' QC'd matrices (``paths``: sample -> .h5ad), read one by one."""
    genes, sizes = shared_genes(paths, min_shared)
    quota = allocate(sizes, max_cells)
    index = pd.Index(genes)
    parts, samples, cell_ids = [], [], []
    for i, (sample, path) in enumerate(paths.items()):
        counts = read_counts(sample, path, pca=True)
        take = stratified_draw(counts.pca, quota[sample], len(counts.cell_ids), seed + i)
        parts.append(on_genes(counts, index)[take])
        cell_ids.append(counts.cell_ids[take])
        samples.append(np.full(len(take), sample, dtype=object))
        progress("sketch", i + 1, len(paths))
    return Sketch(np.concatenate(samples), np.concatenate(cell_ids), genes, sp.csr_matrix(sp.vstack(parts)), sizes)
