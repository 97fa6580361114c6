"""The synthetic bundles: accepted by spatialdata-io for every XOA version, faithful in format, and
carrying the biology (expression classes with their own nuclear morphology) the product needs."""

from __future__ import annotations

import json
import warnings

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely
import tifffile

from xenium_assets.synth import SynthParams, generate_bundle, truth_paths
from xenium_assets_tests.conftest import SMALL, VERSIONS


def _sdata(path):
    import spatialdata_io

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return spatialdata_io.xenium(path)


def _truth(bundle) -> pd.DataFrame:
    return pq.read_table(truth_paths(bundle)[0]).to_pandas()


@pytest.mark.parametrize("version", VERSIONS)
def test_spatialdata_io_reads_every_version(bundles, version):
    from spatialdata.transformations import get_transformation

    bundle = bundles(version)
    truth = _truth(bundle)
    sdata = _sdata(bundle)

    table = sdata.tables["table"]
    assert table.n_obs == len(truth) == SMALL["n_cells"]
    assert list(table.obs["cell_id"].astype(str)) == list(truth["cell_id"])

    image = sdata.images["morphology_focus"]["scale0"]["image"]
    assert image.shape[-2:] == (SMALL["height"], SMALL["width"])
    channels = list(image.coords["c"].values)
    if version in ("1", "1.7"):
        assert len(channels) == 1  # spatialdata-io does not name XOA 1 channels
        assert "morphology_mip" in sdata.images
    else:
        assert channels == ["DAPI", "ATP1A1/CD45/E-Cadherin", "18S", "AlphaSMA/Vimentin"]

    # Pixel size: shapes are in µm with a Scale(1/pixel_size) to the image's pixel space.
    scale = get_transformation(sdata.shapes["cell_boundaries"], "global").scale
    np.testing.assert_allclose(scale, [1 / 0.2125, 1 / 0.2125])

    # Polygons agree with what was written: each cell's polygon holds its nucleus centre, and its
    # area matches the mask-measured cell_area of cells.parquet.
    cells = sdata.shapes["cell_boundaries"]
    assert len(cells) == len(truth)
    cells.index = cells.index.astype(str)
    cells = cells.loc[truth["cell_id"]]
    inside = shapely.contains_xy(cells.geometry.values, truth["x_um"].values, truth["y_um"].values)
    assert inside.all()
    area = pq.read_table(bundle / "cells.parquet", columns=["cell_area"])["cell_area"].to_numpy()
    np.testing.assert_allclose(shapely.area(cells.geometry.values), area, rtol=0.15)
    n_nuclei = int(truth["n_nuclei"].sum())
    assert len(sdata.shapes["nucleus_boundaries"]) == n_nuclei

    # Label masks: the nucleus mask is set at every nucleated cell's centre (binucleate: between nuclei).
    labels = np.asarray(sdata.labels["nucleus_labels"]["scale0"]["image"].data)
    single = truth["n_nuclei"].to_numpy() == 1
    rows = (truth["y_um"].to_numpy() / 0.2125).astype(int)[single]
    cols = (truth["x_um"].to_numpy() / 0.2125).astype(int)[single]
    assert (labels[rows, cols] > 0).all()


def test_image_format_is_the_instruments(bundles):
    bundle = bundles("3")
    first = bundle / "morphology_focus" / "morphology_focus_0000.ome.tif"
    with tifffile.TiffFile(first, is_ome=False) as tif:
        page = tif.pages[0]
        assert page.dtype == np.uint16
        assert (page.tilelength, page.tilewidth) == (1024, 1024)
        assert page.compression == tifffile.COMPRESSION.JPEG2000
        assert len(page.subifds) >= 2  # pyramid in SubIFDs
        assert [lvl.shape for lvl in tif.series[0].levels][:3] == [(1536, 1536), (768, 768), (384, 384)]
    xml = tifffile.tiffcomment(first)
    assert 'PhysicalSizeX="0.2125"' in xml and 'Name="DAPI"' in xml
    # Multi-file OME: the first file points at its siblings, so tifffile merges all four channels.
    with tifffile.TiffFile(first) as tif:
        assert tif.series[0].shape == (4, 1536, 1536)
    v4 = bundles("4") / "morphology_focus"
    assert sorted(p.name for p in v4.iterdir()) == [
        "ch0000_dapi.ome.tif",
        "ch0001_atp1a1_cd45_e-cadherin.ome.tif",
        "ch0002_18s.ome.tif",
        "ch0003_alphasma_vimentin.ome.tif",
    ]
    assert 'ID="Channel:0"' in tifffile.tiffcomment(v4 / "ch0000_dapi.ome.tif")


def test_other_codecs(bundles):
    bundle = bundles("1", codec="zstd", n_cells=200, width=1024, height=1024)
    with tifffile.TiffFile(bundle / "morphology_focus.ome.tif") as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.ZSTD


@pytest.mark.parametrize(
    ("version", "id_type", "feature_type", "label_id"),
    [("1", "int32", "binary", False), ("1.7", "binary", "binary", False), ("3", "string", "string", True)],
)
def test_tables_are_typed_per_release(bundles, version, id_type, feature_type, label_id):
    bundle = bundles(version)
    cells = pq.read_schema(bundle / "cells.parquet")
    assert str(cells.field("cell_id").type) == id_type
    bounds = pq.read_table(bundle / "cell_boundaries.parquet")
    assert ("label_id" in bounds.column_names) is label_id
    assert bounds.num_rows == 13 * SMALL["n_cells"]  # 12 vertices and the closing one per polygon
    tx = pq.read_schema(bundle / "transcripts.parquet")
    assert str(tx.field("feature_name").type) == feature_type
    ids = pq.read_table(bundle / "cells.parquet", columns=["cell_id"])["cell_id"].to_pylist()
    assert ids == sorted(ids)  # real files are sorted by cell id


def test_matrix_is_the_tally_of_q20_transcripts(bundles):
    bundle = bundles("3")
    tx = pq.read_table(bundle / "transcripts.parquet", columns=["cell_id", "feature_name", "qv"]).to_pandas()
    assert (tx["cell_id"] == "UNASSIGNED").any() and (tx["qv"] < 20).any()
    counted = tx[(tx["qv"] >= 20) & (tx["cell_id"] != "UNASSIGNED")]
    tally = counted.groupby(["cell_id", "feature_name"]).size()
    with h5py.File(bundle / "cell_feature_matrix.h5") as f:
        m = f["matrix"]
        barcodes = m["barcodes"][:].astype(str)
        names = m["features/name"][:].astype(str)
        types = set(m["features/feature_type"][:].astype(str))
        from scipy.sparse import csc_matrix

        x = csc_matrix((m["data"][:], m["indices"][:], m["indptr"][:]), shape=tuple(m["shape"][:]))
    assert {"Gene Expression", "Negative Control Probe", "Negative Control Codeword", "Unassigned Codeword"} <= types
    coo = x.tocoo()
    dense = pd.Series(coo.data, index=pd.MultiIndex.from_arrays([barcodes[coo.col], names[coo.row]]))
    pd.testing.assert_series_equal(dense.sort_index(), tally.sort_index(), check_names=False, check_dtype=False)


def test_mtx_and_csv_and_analysis(bundles):
    bundle = bundles("2", csv=True)
    for name in ("cells.csv.gz", "cell_boundaries.csv.gz", "nucleus_boundaries.csv.gz", "transcripts.csv.gz"):
        assert (bundle / name).stat().st_size > 0
    csv_cells = pd.read_csv(bundle / "cells.csv.gz")
    assert len(csv_cells) == SMALL["n_cells"] and csv_cells["cell_id"].str.endswith("-1").all()
    import scanpy as sc

    mtx = sc.read_10x_mtx(bundle / "cell_feature_matrix", gex_only=False)
    h5 = sc.read_10x_h5(bundle / "cell_feature_matrix.h5", gex_only=False)
    assert (mtx.X != h5.X).nnz == 0 and list(mtx.obs_names) == list(h5.obs_names)
    clusters = pd.read_csv(bundle / "analysis/clustering/gene_expression_graphclust/clusters.csv")
    assert list(clusters.columns) == ["Barcode", "Cluster"] and clusters["Cluster"].min() == 1
    assert not (bundles("3") / "transcripts.csv.gz").exists()  # XOA 3 dropped it


def test_multinucleate_cells_from_xoa2(bundles):
    bundle = bundles("3")
    nuclei = pq.read_table(bundle / "nucleus_boundaries.parquet").to_pandas()
    per_cell = nuclei.groupby("cell_id")["label_id"].nunique()
    assert (per_cell == 2).any()
    cells = pq.read_table(bundle / "cells.parquet").to_pandas()
    assert (cells["nucleus_count"] == 0).any()
    assert cells.loc[cells["nucleus_count"] == 0, "nucleus_area"].isna().all()
    counts = cells.set_index("cell_id")["nucleus_count"]
    assert (per_cell == counts.loc[per_cell.index]).all()


def _nucleus_stats(bundle) -> pd.DataFrame:
    """Per-cell nucleus area (cells.parquet) and mean DAPI inside the nucleus mask (image + masks)."""
    import zarr
    from zarr.storage import ZipStore

    dapi = tifffile.imread(bundle / "morphology_focus" / "morphology_focus_0000.ome.tif", is_ome=False)
    masks = zarr.open(ZipStore(bundle / "cells.zarr.zip", read_only=True), mode="r")
    nuc = masks["masks/0"][:]
    owner = masks["polygon_sets/0/cell_index"][:]
    n = len(owner) + 1
    mean = np.bincount(nuc.ravel(), weights=dapi.ravel(), minlength=n)[1:] / np.maximum(
        np.bincount(nuc.ravel(), minlength=n)[1:], 1
    )
    cells = pq.read_table(bundle / "cells.parquet", columns=["cell_id", "nucleus_area"]).to_pandas()
    stats = cells.assign(intensity=pd.Series(mean).groupby(owner).mean().reindex(range(len(cells))).to_numpy())
    return stats.merge(_truth(bundle), on="cell_id")


def test_classes_differ_in_expression_and_morphology(bundles):
    bundle = bundles("3")
    spec = json.loads(truth_paths(bundle)[1].read_text())
    adata = __import__("scanpy").read_10x_h5(bundle / "cell_feature_matrix.h5")
    truth = _truth(bundle).set_index("cell_id").loc[adata.obs_names]
    for name, markers in spec["classes"].items():
        own = np.asarray(adata[truth["label"] == name, markers].X.mean())
        other = np.asarray(adata[truth["label"] != name, markers].X.mean())
        assert own > 10 * other, name
    stats = _nucleus_stats(bundle).groupby("label")[["nucleus_area", "intensity"]].mean()
    assert stats.loc["lymphocyte", "nucleus_area"] < 0.75 * stats.loc["epithelial", "nucleus_area"]
    assert stats.loc["lymphocyte", "intensity"] > 1.2 * stats.loc["macrophage", "intensity"]
    # ... with overlap: the two closest classes share a good part of their nucleus-area range.
    per = _nucleus_stats(bundle)
    epi = per.loc[per["label"] == "epithelial", "nucleus_area"].dropna()
    mac = per.loc[per["label"] == "macrophage", "nucleus_area"].dropna()
    assert np.percentile(epi, 75) > np.percentile(mac, 25)


def test_an_expression_shift_moves_the_samples_baseline_not_its_markers():
    """Each sample's own batch effect: non-marker entries of the mean matrix and the depth move, class markers
    in their own class do not; without a shift the panel is untouched (bundles stay what the seed made)."""
    from xenium_assets.synth.biology import CLASSES, build_panel, shift_panel

    classes = CLASSES[:4]
    panel = build_panel(classes, np.random.default_rng(0))
    assert shift_panel(panel, classes, 0.0, np.random.default_rng(1)) is panel
    one, two = (shift_panel(panel, classes, 1.0, np.random.default_rng(seed)) for seed in (1, 2))
    marker = np.zeros(panel.mean.shape, dtype=bool)
    for k in range(len(classes)):
        marker[k, 6 * k : 6 * k + 6] = True
    for shifted in (one, two):
        np.testing.assert_array_equal(shifted.mean[marker], panel.mean[marker])
        ratio = shifted.mean[~marker] / panel.mean[~marker]
        assert np.abs(np.log(ratio)).mean() > 0.4  # about 0.8 for a log-normal factor of sd 1
    assert one.depth != two.depth and not np.allclose(one.mean, two.mean)  # each sample its own
    with pytest.raises(ValueError, match="expression_shift must be 0"):
        SynthParams(expression_shift=-1)


def test_null_bundle_has_no_morphology_signal(bundles):
    bundle = bundles("3", null=True, seed=8)
    truth = _truth(bundle)
    agree = (truth["label"] == truth["morphology_class"]).mean()
    assert agree < 0.45  # ~1/4 by chance for 4 classes, not the 100 % of a real bundle
    stats = _nucleus_stats(bundle).groupby("label")[["nucleus_area", "intensity"]].mean()
    assert stats["nucleus_area"].max() < 1.25 * stats["nucleus_area"].min()
    assert stats["intensity"].max() < 1.2 * stats["intensity"].min()


def test_null_regions_bundle_is_clumped_but_says_nothing_of_the_class(bundles):
    """Morphology follows a region map of its own: neighbours look alike, yet it tells nothing of the class."""
    from click.testing import CliRunner
    from scipy.spatial import cKDTree
    from sklearn.metrics import adjusted_mutual_info_score

    from xenium_assets.cli import main

    bundle = bundles("3", null_regions=True, seed=8)
    truth = _truth(bundle)
    assert set(truth["morphology_class"]) == set(truth["label"])  # no class missing
    neighbours = cKDTree(truth[["x_um", "y_um"]].to_numpy()).query(truth[["x_um", "y_um"]].to_numpy(), k=7)[1][:, 1:]
    morph = pd.factorize(truth["morphology_class"])[0]
    agree = (morph[neighbours] == morph[:, None]).mean()
    chance = ((np.bincount(morph) / len(morph)) ** 2).sum()  # two cells share a class at random
    assert agree > 1.6 * chance  # 2.0x or more over 300 seeds; 1x for --null
    # Clumped in the image too: a nucleus's measured area goes with its neighbours' (about 0.45; 0 for --null).
    stats = _nucleus_stats(bundle).set_index("cell_id").loc[truth["cell_id"]]
    area = stats["nucleus_area"].to_numpy()
    around = np.nanmean(area[neighbours], axis=1)
    has = ~np.isnan(area) & ~np.isnan(around)
    assert np.corrcoef(area[has], around[has])[0, 1] > 0.2
    # Two independent clumped maps share some information by chance (AMI up to 0.12 over 300 seeds), far
    # below the 1.0 of a real bundle.
    assert adjusted_mutual_info_score(truth["label"], truth["morphology_class"]) < 0.2
    assert json.loads(truth_paths(bundle)[1].read_text())["null_regions"] is True

    with pytest.raises(ValueError, match="choose one"):
        SynthParams(null=True, null_regions=True)
    result = CliRunner().invoke(main, ["synth", str(bundle.parent / "never"), "--null", "--null-regions"])
    assert result.exit_code == 2 and "choose one" in result.output
    assert not (bundle.parent / "never").exists()


def test_truth_is_beside_not_inside(bundles):
    bundle = bundles("3")
    table, meta = truth_paths(bundle)
    assert table.parent == bundle.parent and table.exists() and meta.exists()
    assert not any("truth" in p.name for p in bundle.rglob("*"))


def test_same_seed_same_bundle(tmp_path):
    params = SynthParams(n_cells=150, width=1024, height=1024, seed=5, version="4")
    a = generate_bundle(tmp_path / "a", params).bundle
    b = generate_bundle(tmp_path / "b", params).bundle
    for name in ("cells.parquet", "cell_boundaries.parquet", "transcripts.parquet"):
        pd.testing.assert_frame_equal(pq.read_table(a / name).to_pandas(), pq.read_table(b / name).to_pandas())
    first = "morphology_focus/ch0000_dapi.ome.tif"
    np.testing.assert_array_equal(tifffile.imread(a / first, is_ome=False), tifffile.imread(b / first, is_ome=False))


def test_failed_generation_leaves_nothing(tmp_path):
    def boom(stage, done, total):
        if stage.startswith("image") and done == 1:
            raise KeyboardInterrupt  # as if the run were killed mid-image

    with pytest.raises(KeyboardInterrupt):
        generate_bundle(tmp_path / "x", SynthParams(n_cells=150, width=1024, height=1024), progress=boom)
    assert list(tmp_path.iterdir()) == []


def test_refuses_impossible_density_and_existing_output(tmp_path):
    with pytest.raises(ValueError, match="do not fit"):
        generate_bundle(tmp_path / "x", SynthParams(n_cells=5000, width=512, height=512))
    generate_bundle(tmp_path / "y", SynthParams(n_cells=100, width=1024, height=1024))
    with pytest.raises(FileExistsError, match="already exists"):
        generate_bundle(tmp_path / "y", SynthParams(n_cells=100, width=1024, height=1024))


def test_crowded_tissue_has_touching_nuclei_that_a_threshold_merges(tmp_path):
    """Issue 29: with ``crowding`` a good share of nuclei touch (the truth's ``touching``), a global threshold of
    the DAPI puts most touching pairs into one blob, and the cut polygons stay valid: no cell is invalid."""
    import zarr
    from click.testing import CliRunner
    from scipy import ndimage
    from skimage.filters import threshold_li
    from zarr.storage import ZipStore

    from xenium_assets.bundle.polygons import group_polygons
    from xenium_assets.bundle.validate import inspect_bundle
    from xenium_assets.cli import main

    bundle = generate_bundle(tmp_path / "crowded", SynthParams(n_cells=300, width=1024, height=1024, crowding=0.5))
    truth = _truth(bundle.bundle)
    assert truth["crowded"].mean() == 0.5
    assert truth["touching"].mean() >= 0.3  # 0.37 here; 0.27-0.45 over 20 seeds (mean 0.38)
    assert not truth.loc[~truth["crowded"], "touching"].any()  # elsewhere nuclei keep their distance

    report = inspect_bundle(bundle.bundle)
    assert report.invalid == {} and report.n_valid_cells == 300

    # Touching pairs of the written nucleus polygons (within a pixel, of different cells) are the truth's.
    polys = group_polygons(pq.read_table(bundle.bundle / "nucleus_boundaries.parquet"))
    rings = [
        np.column_stack([polys.x[s : s + k], polys.y[s : s + k]]) for s, k in zip(polys.starts, polys.rows, strict=True)
    ]
    nuclei = shapely.polygons(rings)
    assert shapely.is_valid(nuclei).all()
    a, b = shapely.STRtree(nuclei).query(nuclei, predicate="dwithin", distance=0.2125)
    pair = (a < b) & (polys.ids[a] != polys.ids[b])
    a, b = a[pair], b[pair]
    touching = set(polys.ids[a]) | set(polys.ids[b])
    assert touching == set(truth.loc[truth["touching"], "cell_id"])
    # They touch without overlapping more than the pixel grid's rounding.
    assert shapely.area(shapely.intersection(nuclei[a], nuclei[b])).max() < 0.5

    # A global threshold (Li's, as the classical baseline) merges most touching pairs into one component.
    dapi = tifffile.imread(bundle.bundle / "morphology_focus" / "morphology_focus_0000.ome.tif", is_ome=False)
    blobs = ndimage.label(dapi > threshold_li(dapi))[0]
    centre = shapely.get_coordinates(shapely.centroid(nuclei)) / 0.2125
    blob = blobs[centre[:, 1].astype(int), centre[:, 0].astype(int)]
    assert ((blob[a] == blob[b]) & (blob[a] > 0)).mean() > 0.9  # 1.0 here (0.96 with Otsu's)
    # The truth's label masks keep the two apart.
    masks = zarr.open(ZipStore(bundle.bundle / "cells.zarr.zip", read_only=True), mode="r")["masks/0"][:]
    assert len(np.unique(masks)) - 1 == len(nuclei)

    result = CliRunner().invoke(main, ["synth", str(tmp_path / "never"), "--crowded", "--cells", "9000"])
    assert result.exit_code == 2 and "50% of them crowded" in result.output
    result = CliRunner().invoke(main, ["synth", str(tmp_path / "never"), "--crowding", "0.8", "--cells", "9000"])
    assert result.exit_code == 2 and "80% of them crowded" in result.output
    with pytest.raises(ValueError, match="crowding is a share"):
        SynthParams(crowding=1.5)


def test_default_tissue_is_what_the_seed_always_made():
    """Without crowding the tissue is what the seed made before the option existed: a digest of a small slide's
    centres, classes, nuclei and outlines, recorded before issue 29's change. (Whole bundles were compared too.)"""
    import hashlib

    from xenium_assets.synth import biology
    from xenium_assets.synth.shapes import build_outlines, touching

    rng = np.random.default_rng(3)
    side = 1024 * 0.2125
    xy = biology.place_cells(300, side, side, 8.0, rng)
    cls = biology.assign_regions(xy, 4, side, side, purity=0.8, rng=rng)
    pop = biology.draw_morphology(xy, cls, biology.CLASSES[:4], null=False, multinucleate=True, rng=rng)
    outlines = build_outlines(pop, side, side, 0.2125)
    digest = hashlib.sha256()
    for values in (xy, cls, pop.semi_major, pop.brightness, outlines.nucleus_xy, outlines.nucleus_cell):
        digest.update(np.round(np.asarray(values, dtype=np.float64), 3).tobytes())
    assert digest.hexdigest()[:16] == "879e1fc1469de3e1"
    assert not touching(outlines, len(pop), 0.2125).any()
