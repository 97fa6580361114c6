"""The label reference: classes from a sketch, one name per class in every sample, later samples placed in it."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import adjusted_rand_score

from xenium_assets.bundle.manifest import write_manifest
from xenium_assets.bundle.validate import inspect_bundle
from xenium_assets.expression.matrix import read_expression
from xenium_assets.expression.qc import run_qc
from xenium_assets.labels.integrate import SoftClusters, same_sample_share
from xenium_assets.labels.matrix import SampleCounts, on_genes, read_counts
from xenium_assets.labels.options import MethodOptions, ReferenceParams
from xenium_assets.labels.reference import LabelReference, build_reference, label_sample
from xenium_assets.labels.sketch import allocate, stratified_draw
from xenium_assets.labels.table import UNASSIGNED, LabelError, Labelling, class_counts, finalise, label_version
from xenium_assets.synth import truth_paths

PNG = b"\x89PNG\r\n\x1a\n"
SHIFT = 1.0
# Three samples of three XOA releases, each with its own expression shift (non-marker baselines and depth);
# the reference is built from the first two, the third is added after it.
SAMPLES = (("a", "2", 51), ("b", "3", 52), ("c", "4", 53))
IN_REFERENCE = ("a", "b")


@pytest.fixture(scope="module")
def shifted(bundles, tmp_path_factory):
    """QC'd matrices (.h5ad, as qc_adata writes them) of the three samples, their truth, and manifests."""
    root = tmp_path_factory.mktemp("labels")
    paths, truth, manifests = {}, [], {}
    for name, version, seed in SAMPLES:
        bundle = bundles(version, seed=seed, expression_shift=SHIFT)
        manifests[name] = write_manifest(inspect_bundle(bundle), name, root / name)
        paths[name] = root / f"{name}.h5ad"
        run_qc(read_expression(manifests[name])).adata.write_h5ad(paths[name])
        t = pq.read_table(truth_paths(bundle)[0]).to_pandas()
        truth.append(t.assign(key=name + "/" + t["cell_id"]))
    classes = json.loads(truth_paths(bundles("2", seed=51, expression_shift=SHIFT))[1].read_text())["classes"]
    return paths, pd.concat(truth).set_index("key"), manifests, classes


def _build(shifted, options: MethodOptions | None = None, **params):
    paths = shifted[0]
    options = options or MethodOptions()
    return build_reference({k: paths[k] for k in IN_REFERENCE}, options, ReferenceParams(**params), "test-v1")


def _place_all(reference: LabelReference, shifted) -> pd.DataFrame:
    """Every sample's labels table, all samples together (the third was not in the reference)."""
    paths = shifted[0]
    tables = [label_sample(reference, read_counts(k, paths[k]), min_confidence=0.5)[0] for k in paths]
    table = pd.concat(tables, ignore_index=True)
    return table.assign(key=table["sample"] + "/" + table["cell_id"])


def _true(table: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    return truth.loc[table["key"], "label"].to_numpy()


def _one_name_per_class(table: pd.DataFrame, truth: pd.DataFrame) -> bool:
    """Each true class gets the same majority label in every sample."""
    frame = table.assign(true=_true(table, truth))
    majority = frame.groupby(["true", "sample"])["label"].agg(lambda s: s.mode()[0]).unstack()
    return bool((majority.nunique(axis=1) == 1).all())


@pytest.fixture(scope="module")
def leiden(shifted):
    return _build(shifted)


def test_classes_are_one_class_in_every_sample_including_one_added_later(leiden, shifted):
    _, truth, _, _ = shifted
    table = _place_all(leiden.reference, shifted)
    assert set(table["sample"]) == {"a", "b", "c"}
    # Across all samples together, not per sample: a class split by sample would fail here.
    assert adjusted_rand_score(_true(table, truth), table["label"]) >= 0.85
    assert _one_name_per_class(table, truth)
    epi = table.loc[_true(table, truth) == "epithelial", "label"].mode()[0]
    assert set(epi.split("+")) & {"EPCAM", "KRT8", "KRT18", "CDH1", "CLDN4", "ELF3"}  # named by its markers
    assert list(table.columns[:6]) == ["sample", "cell_id", "label", "confidence", "excluded_reason", "label_version"]
    assert (table["label_version"] == "test-v1").all() and table["confidence"].between(0, 1).all()
    assert np.median(table["confidence"]) > 0.8
    assert leiden.reference.info["samples"] == list(IN_REFERENCE)


def test_the_shift_is_a_batch_effect_that_placing_removes(leiden, shifted):
    """The generator's per-sample shift keeps each sample's cells of a class apart from the other samples' (most
    of a cell's neighbours within its class come from its own sample); placed in the reference, they mix."""
    paths, truth, _, _ = shifted
    embeddings, samples, keys = {True: [], False: []}, [], []
    genes = pd.Index(leiden.reference.genes)
    for name, path in paths.items():
        counts = read_counts(name, path)
        for correct in (True, False):
            embeddings[correct].append(leiden.reference.embed(on_genes(counts, genes), correct=correct))
        samples += [name] * len(counts.cell_ids)
        keys += list(name + "/" + counts.cell_ids)
    classes = truth.loc[keys, "label"].to_numpy()
    raw, chance = same_sample_share(np.vstack(embeddings[False]), np.array(samples), classes)
    placed, _ = same_sample_share(np.vstack(embeddings[True]), np.array(samples), classes)
    assert chance < 0.4 and raw > placed + 0.15 and placed < 0.5, (raw, placed, chance)


def test_a_sketch_agrees_with_a_reference_of_every_cell(leiden, shifted):
    paths = shifted[0]
    sizes = {k: len(read_counts(k, paths[k]).cell_ids) for k in IN_REFERENCE}
    small = _build(shifted, max_cells=sum(sizes.values()) // 4)
    assert len(small.cells) <= sum(sizes.values()) // 4 < len(leiden.cells) == sum(sizes.values())
    assert small.reference.info["sketch_cells"] == allocate(sizes, sum(sizes.values()) // 4)
    full, sketched = _place_all(leiden.reference, shifted), _place_all(small.reference, shifted)
    assert adjusted_rand_score(full["label"], sketched["label"]) >= 0.9


def test_a_saved_reference_places_cells_as_the_built_one(leiden, shifted, tmp_path):
    paths = shifted[0]
    leiden.reference.save(tmp_path / "ref", leiden.cells_table(), leiden.labelling.markers)
    loaded = LabelReference.load(tmp_path / "ref")
    counts = read_counts("c", paths["c"])
    a, _ = label_sample(leiden.reference, counts, min_confidence=0.5)
    b, _ = label_sample(loaded, counts, min_confidence=0.5)
    pd.testing.assert_frame_equal(a, b)
    assert pd.read_parquet(tmp_path / "ref" / "cells.parquet").shape[0] == len(leiden.cells)
    with pytest.raises(LabelError, match="no label reference here"):
        LabelReference.load(tmp_path / "nothing")


def test_a_sample_of_another_panel_is_refused(leiden, shifted, tmp_path):
    counts = read_counts("c", shifted[0]["c"])
    genes = pd.Index(leiden.reference.genes)
    keep = counts.genes[: len(counts.genes) // 2]
    other = SampleCounts("other", counts.cell_ids, keep, counts.counts[:, : len(keep)])
    missing = len(genes.difference(keep))
    with pytest.raises(LabelError, match=f"sample 'other' lacks {missing} of the reference's .* build a reference"):
        leiden.reference.place(other)
    renamed = SampleCounts("renamed", counts.cell_ids, pd.Index([f"X{g}" for g in counts.genes]), counts.counts)
    with pytest.raises(LabelError, match="measured with another panel"):
        leiden.reference.place(renamed)
    half = ad.AnnData(
        X=counts.counts[:, : len(keep)], obs=pd.DataFrame(index=counts.cell_ids), var=pd.DataFrame(index=keep)
    )
    half.write_h5ad(tmp_path / "half.h5ad")
    with pytest.raises(LabelError, match="share only .* genes .* measured with different panels; build one reference"):
        build_reference(
            {"a": shifted[0]["a"], "half": tmp_path / "half.h5ad"}, MethodOptions(), ReferenceParams(), "test-v2"
        )
    one_short = SampleCounts("short", counts.cell_ids, counts.genes[1:], counts.counts[:, 1:])
    _, notes = label_sample(leiden.reference, one_short, min_confidence=0.5)
    assert f"{len(genes.difference(counts.genes[1:]))} reference genes not in short after its QC count as zero" in notes


def test_mapping_removes_a_samples_own_shift():
    """A sample that is the reference's own cells moved by a constant lands back where they were."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, (4, 10))
    cells = np.repeat(centres, 200, axis=0) + rng.normal(0, 0.5, (800, 10))
    unit = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    clusters = SoftClusters(unit, np.zeros(4), np.zeros((4, 10)))
    weights = clusters.assign(cells)
    clusters = SoftClusters(unit, weights.sum(axis=0), weights.T @ cells)
    shifted = cells + 1.5
    corrected = clusters.correct(shifted, ridge=1e-6)
    assert np.abs(corrected - cells).mean() < 0.1 < np.abs(shifted - cells).mean()


def test_sketch_shares_and_rare_populations():
    assert allocate({"a": 50, "b": 1_000, "c": 1_000}, 600) == {"a": 50, "b": 275, "c": 275}
    assert allocate({"a": 10, "b": 20}, 100) == {"a": 10, "b": 20}
    rng = np.random.default_rng(1)
    common = rng.normal(0, 1, (19_940, 5))
    rare = rng.normal(12, 1, (60, 5))  # 0.3 % of the sample
    drawn = stratified_draw(np.vstack([common, rare]), 1_000, 20_000, seed=0)
    assert len(drawn) == 1_000 and np.all(np.diff(drawn) > 0)
    assert (drawn >= 19_940).sum() >= 15  # each k-means group keeps 20; a uniform 5 % draw keeps about 3
    assert len(stratified_draw(None, 50, 200, seed=0)) == 50


def test_methods_on_the_reference(shifted, tmp_path):
    """Marker sets, an annotated reference and the instrument's clusters name the reference's classes too; every
    sample is then placed in it."""
    paths, truth, manifests, classes = shifted
    markers = tmp_path / "markers.yaml"
    markers.write_text(json.dumps({k: [*v, "NOTAGENE"] if k == "epithelial" else v for k, v in classes.items()}))
    built = _build(shifted, MethodOptions(method="markers", markers_file=str(markers)))
    assert "epithelial: not in the panel: NOTAGENE" in built.labelling.notes
    table = _place_all(built.reference, shifted)
    assert adjusted_rand_score(_true(table, truth), table["label"]) >= 0.85
    assert set(table["label"]) <= {*classes, UNASSIGNED}
    with pytest.raises(LabelError, match="class 'ghost': none of its marker genes"):
        markers.write_text(json.dumps({**classes, "ghost": ["NOPE1"]}))
        _build(shifted, MethodOptions(method="markers", markers_file=str(markers)))

    annotated = _annotated(paths["a"], truth, tmp_path / "annotated.h5ad")
    built = _build(shifted, MethodOptions(method="reference", reference_file=str(annotated)))
    table = _place_all(built.reference, shifted)
    assert adjusted_rand_score(_true(table, truth), table["label"]) >= 0.85
    assert set(table["label"]) <= set(truth["label"])

    graphclust = {k: str(manifests[k].path("graphclust")) for k in IN_REFERENCE}
    built = _build(shifted, MethodOptions(method="xenium_graphclust", graphclust=graphclust))
    in_a = built.cells.obs["sample"].to_numpy() == "a"
    cells = built.cells_table()[in_a]
    assert adjusted_rand_score(truth.loc["a/" + cells["cell_id"], "label"], cells["label"]) > 0.5
    assert (built.labelling.confidence == 1).all()
    with pytest.raises(LabelError, match="has no analysis/ clustering"):
        _build(shifted, MethodOptions(method="xenium_graphclust", graphclust={"a": None, "b": None}))


def _annotated(path: Path, truth: pd.DataFrame, out: Path) -> Path:
    """An annotated reference: sample 'a' with its true labels, as raw counts (as users often have)."""
    counts = read_counts("a", path)
    ref = ad.AnnData(X=counts.counts, obs=pd.DataFrame(index=counts.cell_ids), var=pd.DataFrame(index=counts.genes))
    ref.obs["cell_type"] = truth.loc["a/" + counts.cell_ids, "label"].to_numpy()
    ref.write_h5ad(out)
    return out


def test_celltypist_model_from_a_local_file(shifted, tmp_path):
    import celltypist
    import scanpy as sc

    paths, truth, _, _ = shifted
    ref = ad.read_h5ad(_annotated(paths["a"], truth, tmp_path / "annotated.h5ad"))
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    # SGD: celltypist 1.7 passes multi_class to LogisticRegression, which scikit-learn 1.9 no longer takes.
    model = celltypist.train(
        ref, labels="cell_type", feature_selection=False, check_expression=False, use_SGD=True, max_iter=50
    )
    model.write(str(tmp_path / "model.pkl"))
    built = _build(shifted, MethodOptions(method="reference", celltypist_model=str(tmp_path / "model.pkl")))
    table = _place_all(built.reference, shifted)
    assert adjusted_rand_score(_true(table, truth), table["label"]) >= 0.85
    with pytest.raises(LabelError, match="model file not found"):
        _build(shifted, MethodOptions(method="reference", celltypist_model=str(tmp_path / "nope.pkl")))


def test_reference_pictures_and_markers(leiden):
    from xenium_assets.labels.plots import umap_figure

    assert umap_figure(leiden.cells, leiden.labelling.label)[:8] == PNG
    assert set(leiden.labelling.markers.columns) >= {"label", "rank", "gene"}


def test_exclusions_and_version():
    labelling = Labelling(
        label=np.array(["T", "T", "T", "B", UNASSIGNED, "T"], dtype=object),
        confidence=np.array([0.9, 0.9, 0.2, 0.9, 0.9, 0.9]),
    )
    table = finalise("s", np.array(list("abcdef")), labelling, min_confidence=0.5, rare_classes={"B"}, version="v1")
    assert list(table.columns) == ["sample", "cell_id", "label", "confidence", "excluded_reason", "label_version"]
    assert list(table["excluded_reason"]) == ["", "", "low_confidence", "rare_class", "unassigned", ""]
    counts = class_counts(table)
    assert counts.loc["T", "s"] == 3 and counts.loc["excluded: rare_class", "s"] == 1
    v = label_version("leiden", {"resolution": 0.5}, {"s": "abc"})
    assert v == label_version("leiden", {"resolution": 0.5}, {"s": "abc"}) and v.startswith("leiden-")
    assert v != label_version("leiden", {"resolution": 0.6}, {"s": "abc"})
    assert v != label_version("leiden", {"resolution": 0.5}, {"s": "abd"})


def test_a_marker_file_edited_in_place_changes_its_fingerprint(tmp_path):
    markers = tmp_path / "markers.yaml"
    markers.write_text("T: [CD3E]\nB: [MS4A1]\n")
    options = MethodOptions(method="markers", markers_file=str(markers))
    before = options.fingerprints()
    markers.write_text("T: [CD3E, CD2]\nB: [MS4A1]\n")  # same path, other genes
    assert options.fingerprints() != before and options.fingerprints() == options.fingerprints()
