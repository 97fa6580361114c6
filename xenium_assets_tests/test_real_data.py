"""The real (cropped, partly rewritten) Xenium data in ../shared/real_xenium must load."""

from __future__ import annotations

import numpy as np

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
