"""The real (cropped, partly rewritten) Xenium data in ../shared/real_xenium must load."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xenium_assets.bundle.errors import BundleError
from xenium_assets.bundle.tables import read_matrix_index
from xenium_assets.bundle.validate import inspect_bundle
from xenium_assets_tests.conftest import BONE_MARROW_H5, JURKAT, JURKAT_ORIGIN, JURKAT_PIXEL_SIZE, needs_shared

pytestmark = needs_shared


def test_jurkat_raji_needs_its_pixel_size():
    try:
        inspect_bundle(JURKAT)
    except BundleError as err:
        assert "pixel size unknown" in str(err) and "--pixel-size" in str(err)
    else:
        raise AssertionError("a bundle without any pixel size must be refused")


def test_jurkat_raji_loads_with_its_geometry():
    report = inspect_bundle(JURKAT, pixel_size_um=JURKAT_PIXEL_SIZE, image_origin_um=JURKAT_ORIGIN)
    assert report.n_cells == 526
    assert report.id_kind == "string" and report.files.image_layout == "v1"
    assert report.dapi.levels == [(237, 237)] and report.dapi.compression == "NONE"
    assert report.feature_types == {"Gene Expression": 27, "Negative Control Probe": 1, "Unassigned Codeword": 2}
    # Cells span 994.9-1405.3 µm but the image 1000-1400 µm: the overhang is counted, not dropped.
    assert 0 < report.invalid["centroid_off_image"] < 40
    assert set(report.invalid) == {"centroid_off_image"}
    assert report.n_valid_cells == 526 - report.invalid["centroid_off_image"]
    assert any("no experiment.xenium" in p for p in report.problems)


def test_bone_marrow_matrix_index():
    index = read_matrix_index(BONE_MARROW_H5, "h5")
    assert len(index.barcodes) == 84_518
    assert index.barcodes[0] == "aaabckmo-1" and list(index.barcodes) == sorted(index.barcodes)
    types, counts = np.unique(index.feature_types.astype(str), return_counts=True)
    assert dict(zip(types, counts, strict=True)) == {
        "Gene Expression": 477,
        "Negative Control Codeword": 41,
        "Negative Control Probe": 20,
        "Unassigned Codeword": 3,
    }


def test_bone_marrow_copies_placed_in_a_reference_keep_its_classes(tmp_path, bundles):
    """Real counts (sparse, about 10 transcripts a cell): in a reference from a sketch of two Poisson-resampled
    copies of the bone-marrow matrix, a third copy, added later, gets every class and the class proportions of a
    copy that was in the reference (total variation 0.003-0.006 over three seeds); a synthetic sample of another
    panel is refused by it."""
    from xenium_assets.bench import resampled_copies
    from xenium_assets.labels.matrix import read_counts
    from xenium_assets.labels.options import MethodOptions, ReferenceParams
    from xenium_assets.labels.reference import build_reference, label_sample
    from xenium_assets.labels.table import LabelError

    paths = resampled_copies(BONE_MARROW_H5, 3, tmp_path, 0, lambda *_: None)
    built = build_reference(
        {k: paths[k] for k in ("s00", "s01")}, MethodOptions(), ReferenceParams(max_cells=6_000), "real-1"
    )
    reference = built.reference
    assert len(built.cells) == 6_000 and len(reference.classes) >= 5
    placed, notes = label_sample(reference, read_counts("s02", paths["s02"]), min_confidence=0.5)
    assert len(placed) > 25_000 and not notes
    inside, _ = label_sample(reference, read_counts("s00", paths["s00"]), min_confidence=0.5)
    share = pd.concat(
        [t["label"].value_counts(normalize=True) for t in (inside, placed)], axis=1, keys=["in", "added"]
    ).fillna(0.0)
    assert set(placed["label"]) == set(inside["label"]) == set(reference.classes)
    assert 0.5 * (share["in"] - share["added"]).abs().sum() < 0.03, share  # total variation distance
    from xenium_assets.bundle.manifest import write_manifest
    from xenium_assets.expression.matrix import read_expression
    from xenium_assets.expression.qc import run_qc

    manifest = write_manifest(inspect_bundle(bundles("3")), "synthetic", tmp_path / "synthetic")
    run_qc(read_expression(manifest)).adata.write_h5ad(tmp_path / "synthetic.h5ad")
    with pytest.raises(LabelError, match="measured with another panel .* build a reference for that panel"):
        reference.place(read_counts("synthetic", tmp_path / "synthetic.h5ad"))
