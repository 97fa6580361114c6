"""Cross-sample labels: each method recovers the synthetic classes, consistently across samples."""

from __future__ import annotations

import json

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
from xenium_assets.labels.graphclust import label_graphclust
from xenium_assets.labels.joint import (
    UNASSIGNED,
    LabelError,
    Labelling,
    class_counts,
    finalise,
    joint_matrix,
    label_version,
)
from xenium_assets.labels.leiden import label_leiden
from xenium_assets.labels.markers import label_markers, read_marker_file
from xenium_assets.labels.plots import umap_figure
from xenium_assets.labels.reference import label_celltypist, label_reference
from xenium_assets.synth import truth_paths

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def two_samples(bundles, tmp_path_factory):
    """Two QC'd samples from different XOA releases and seeds, with their truth and manifests."""
    root = tmp_path_factory.mktemp("labels")
    samples, truth, manifests = {}, [], {}
    for name, bundle in (("a", bundles("3")), ("b", bundles("4", seed=8))):
        manifests[name] = write_manifest(inspect_bundle(bundle), name, root / name)
        samples[name] = run_qc(read_expression(manifests[name])).adata
        t = pq.read_table(truth_paths(bundle)[0]).to_pandas()
        truth.append(t.assign(key=name + "/" + t["cell_id"]))
    classes = json.loads(truth_paths(bundles("3"))[1].read_text())["classes"]
    return samples, pd.concat(truth).set_index("key"), manifests, classes


def _true(joint, truth):
    return truth.loc[joint.obs_names, "label"].to_numpy()


def _consistent(joint, labels, truth) -> bool:
    """Each true class gets the same majority label in every sample."""
    frame = pd.DataFrame({"true": _true(joint, truth), "label": labels, "sample": joint.obs["sample"].to_numpy()})
    majority = frame.groupby(["true", "sample"], observed=True)["label"].agg(lambda s: s.mode()[0]).unstack()
    return bool((majority.nunique(axis=1) == 1).all())


def test_leiden_recovers_classes_across_samples(two_samples):
    samples, truth, _, _ = two_samples
    joint = joint_matrix(samples)
    assert joint.obs_names[0].startswith("a/") and set(joint.obs["sample"]) == {"a", "b"}
    result = label_leiden(joint)
    assert adjusted_rand_score(_true(joint, truth), result.label) >= 0.85
    assert _consistent(joint, result.label, truth)
    assert "BBKNN" in result.notes[0]
    # Clusters are named by their markers: the epithelial cluster carries an epithelial marker.
    epi = pd.Series(result.label[_true(joint, truth) == "epithelial"]).mode()[0]
    assert set(epi.split("+")) & {"EPCAM", "KRT8", "KRT18", "CDH1", "CLDN4", "ELF3"}
    assert ((result.confidence >= 0) & (result.confidence <= 1)).all() and np.median(result.confidence) > 0.8
    assert umap_figure(joint, result.label)[:8] == PNG


def test_markers_recover_classes_and_warn_about_absent_genes(two_samples, tmp_path):
    samples, truth, _, classes = two_samples
    joint = joint_matrix(samples)
    path = tmp_path / "markers.yaml"
    with_absent = {k: [*v, "NOTAGENE"] if k == "epithelial" else v for k, v in classes.items()}
    path.write_text(json.dumps(with_absent))  # JSON is YAML
    result = label_markers(joint, read_marker_file(path))
    assert adjusted_rand_score(_true(joint, truth), result.label) >= 0.85
    assert _consistent(joint, result.label, truth)
    assert result.notes == ["epithelial: not in the panel: NOTAGENE"]
    assert ((result.confidence > 0) & (result.confidence <= 1)).all()
    # A cell whose best class does not beat the runner-up by the margin is Unassigned.
    strict = label_markers(joint, read_marker_file(path), margin=1.0)
    unassigned = strict.label == UNASSIGNED
    assert unassigned.sum() > (result.label == UNASSIGNED).sum()
    assert (strict.label[~unassigned] == result.label[~unassigned]).all()
    with pytest.raises(LabelError, match="class 'ghost': none of its marker genes"):
        label_markers(joint, {**classes, "ghost": ["NOPE1", "NOPE2"]})
    path.write_text("- just\n- a list\n")
    with pytest.raises(LabelError, match="expected a YAML mapping"):
        read_marker_file(path)


def _reference(two_samples, tmp_path):
    """An annotated reference: sample 'a' with its true labels (raw counts, as users often have)."""
    samples, truth, _, _ = two_samples
    a = samples["a"]
    ref = ad.AnnData(
        X=a.layers["counts"].copy(), obs=pd.DataFrame(index=a.obs_names), var=pd.DataFrame(index=a.var_names)
    )
    ref.obs["cell_type"] = truth.loc["a/" + a.obs_names, "label"].to_numpy()
    path = tmp_path / "reference.h5ad"
    ref.write_h5ad(path)
    return path, ref


def test_reference_transfer(two_samples, tmp_path):
    samples, truth, _, _ = two_samples
    path, _ = _reference(two_samples, tmp_path)
    joint = joint_matrix({"b": samples["b"]})
    result = label_reference(joint, path, "cell_type")
    assert adjusted_rand_score(_true(joint, truth), result.label) >= 0.85
    assert set(result.label) <= set(truth["label"])
    with pytest.raises(LabelError, match="no obs column 'missing'"):
        label_reference(joint, path, "missing")
    nothing_shared = ad.AnnData(X=np.ones((5, 2), dtype=np.float32), var=pd.DataFrame(index=["X1", "X2"]))
    nothing_shared.obs["cell_type"] = "t"
    nothing_shared.write_h5ad(tmp_path / "alien.h5ad")
    with pytest.raises(LabelError, match="shares no genes with the panel"):
        label_reference(joint, tmp_path / "alien.h5ad", "cell_type")


def test_celltypist_model_from_a_local_file(two_samples, tmp_path):
    import celltypist
    import scanpy as sc

    samples, truth, _, _ = two_samples
    _, ref = _reference(two_samples, tmp_path)
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    # SGD: celltypist 1.7 passes multi_class to LogisticRegression, which scikit-learn 1.9 no longer takes.
    model = celltypist.train(
        ref, labels="cell_type", feature_selection=False, check_expression=False, use_SGD=True, max_iter=50
    )
    model.write(str(tmp_path / "model.pkl"))
    joint = joint_matrix({"b": samples["b"]})
    result = label_celltypist(joint, tmp_path / "model.pkl")
    assert adjusted_rand_score(_true(joint, truth), result.label) >= 0.85
    with pytest.raises(LabelError, match="model file not found"):
        label_celltypist(joint, tmp_path / "nope.pkl")


def test_instrument_clusters_as_baseline(two_samples):
    samples, truth, manifests, _ = two_samples
    joint = joint_matrix(samples)
    result = label_graphclust(joint, {k: m.path("graphclust") for k, m in manifests.items()})
    in_a = joint.obs["sample"].to_numpy() == "a"
    assert adjusted_rand_score(_true(joint, truth)[in_a], result.label[in_a]) > 0.5
    assert (result.confidence == 1).all()
    with pytest.raises(LabelError, match="has no analysis/ clustering"):
        label_graphclust(joint, {"a": None, "b": None})


def test_exclusions_and_version():
    obs = pd.DataFrame({"sample": "s", "cell_id": list("abcdef")}, index=[f"s/{c}" for c in "abcdef"])
    joint = ad.AnnData(X=np.zeros((6, 2)), obs=obs)
    labelling = Labelling(
        label=np.array(["T", "T", "T", "B", UNASSIGNED, "T"], dtype=object),
        confidence=np.array([0.9, 0.9, 0.2, 0.9, 0.9, 0.9]),
    )
    table = finalise(joint, labelling, min_confidence=0.5, min_class_cells=2, version="v1")
    assert list(table.columns) == ["sample", "cell_id", "label", "confidence", "excluded_reason", "label_version"]
    assert list(table["excluded_reason"]) == ["", "", "low_confidence", "rare_class", "unassigned", ""]
    counts = class_counts(table)
    assert counts.loc["T", "s"] == 3 and counts.loc["excluded: rare_class", "s"] == 1
    v = label_version("leiden", {"resolution": 0.5}, {"s": "abc"})
    assert v == label_version("leiden", {"resolution": 0.5}, {"s": "abc"}) and v.startswith("leiden-")
    assert v != label_version("leiden", {"resolution": 0.6}, {"s": "abc"})
    assert v != label_version("leiden", {"resolution": 0.5}, {"s": "abd"})


def test_a_marker_file_edited_in_place_changes_the_label_version(tmp_path):
    from xenium_assets.defs.cell_labels import LabelConfig, version_inputs

    markers = tmp_path / "markers.yaml"
    markers.write_text("T: [CD3E]\nB: [MS4A1]\n")
    config = LabelConfig(method="markers", markers_file=str(markers))
    before = label_version("markers", config.model_dump(), version_inputs(config, {"s": "abc"}))
    markers.write_text("T: [CD3E, CD2]\nB: [MS4A1]\n")  # same path, other genes
    after = label_version("markers", config.model_dump(), version_inputs(config, {"s": "abc"}))
    assert before != after
    assert after == label_version("markers", config.model_dump(), version_inputs(config, {"s": "abc"}))


def test_no_shared_genes_cannot_be_labelled_jointly():
    one = ad.AnnData(X=np.ones((3, 2)), var=pd.DataFrame(index=["G1", "G2"]), obsm={"spatial": np.zeros((3, 2))})
    two = ad.AnnData(X=np.ones((3, 2)), var=pd.DataFrame(index=["G3", "G4"]), obsm={"spatial": np.zeros((3, 2))})
    with pytest.raises(LabelError, match="share 0 genes"):
        joint_matrix({"one": one, "two": two})
    with pytest.raises(LabelError, match="materialize qc_adata first"):
        joint_matrix({})
