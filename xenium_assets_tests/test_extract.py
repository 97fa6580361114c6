"""Patch extraction (patches/extract.py): tile tasks, pixels, masks, metadata and resampling, against direct reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely
import webdataset as wds

from xenium_assets.bundle.image import open_plane
from xenium_assets.layout import TileShardFiles
from xenium_assets.patches import grid
from xenium_assets.patches.extract import extract_tile
from xenium_assets.patches.geometry import read_tile_polygons
from xenium_assets.patches.masks import MASK_NUCLEUS, MASK_PERINUCLEAR, nucleus, perinuclear, ring
from xenium_assets.patches.shards import read_index
from xenium_assets_tests.conftest import JURKAT, JURKAT_ORIGIN, JURKAT_PIXEL_SIZE, needs_shared
from xenium_assets_tests.patch_pipeline import make_tasks, prepare, read_samples


def test_geometry_split_on_another_pixel_grid_is_refused(extracted, tmp_path):
    """tile_geometry no longer waits for dapi_zarr, so the tile tasks check the two used the same grid."""
    import dataclasses

    _, root, manifest, store, _, _ = extracted
    other = dataclasses.replace(store, shape=(store.shape[0] // 2, store.shape[1] // 2), pixel_size_um=0.425)
    with pytest.raises(ValueError, match="re-materialize tile_geometry and dapi_zarr with the same patch geometry"):
        make_tasks(manifest, other, root, tmp_path)


def test_csv_only_bundle_gives_the_same_samples(bundles, bundle_copy, tmp_path):
    """A bundle with only .csv.gz tables (older instrument software) gives the samples its Parquet twin gives."""
    source = bundles("2", csv=True)
    csv_only = bundle_copy("2", csv=True)
    for name in ("cells", "cell_boundaries", "nucleus_boundaries", "transcripts"):
        (csv_only / f"{name}.parquet").unlink(missing_ok=True)
    made = {}
    for name, bundle in (("parquet", source), ("csv", csv_only)):
        manifest, store = prepare(bundle, tmp_path / name, "s")
        assert str(manifest.path("cell_boundaries")).endswith(".csv.gz") == (name == "csv")
        for task in make_tasks(manifest, store, tmp_path / name, tmp_path / name / "shards"):
            extract_tile(task)
        made[name] = read_samples(tmp_path / name / "shards")
    parquet, csv = made["parquet"], made["csv"]
    assert len(parquet) > 500 and [s["__key__"] for s in csv] == [s["__key__"] for s in parquet]
    for a, b in zip(parquet, csv, strict=True):
        np.testing.assert_array_equal(a["dapi.npy"], b["dapi.npy"])
        np.testing.assert_array_equal(a["mask.npy"], b["mask.npy"])
        assert a["json"]["cell_id"] == b["json"]["cell_id"] and a["json"]["origin_px"] == b["json"]["origin_px"]
        np.testing.assert_allclose(a["json"]["centroid_um"], b["json"]["centroid_um"], rtol=1e-6)


def test_shards_hold_every_valid_cell_and_no_label(extracted):
    """Pixels never depend on labels: every cell that passes validation is a patch, whether QC or labelling keeps
    it or not, and neither the samples nor the index carry a label (training joins them by key)."""
    _, root, manifest, _, tasks, results = extracted
    samples = read_samples(root / "shards")
    keys = [s["__key__"] for s in samples]
    eligible = sorted(f"s/{c}" for t in tasks for c in t.cells["cell_id"])
    assert sorted(keys) == eligible and len(set(keys)) == len(keys)
    invalid = pq.read_table(manifest.cell_problems, filters=[("kind", "==", "invalid")]).to_pandas()
    assert not set(keys) & {f"s/{c}" for c in invalid["cell_id"]}
    skipped = pd.DataFrame([r["skipped"] for r in results]).sum()
    assert skipped["no_nucleus"] > 0 and not {"no_label", "excluded_low_confidence"} & set(skipped.index)
    assert len(keys) + int(skipped.sum()) == 600  # every cell is a patch or counted as skipped
    index = read_index(sorted((root / "shards").iterdir()))
    assert sorted(index["key"]) == sorted(keys)
    assert not {"label", "label_version", "confidence"} & set(index.columns)
    written = {
        n for tile in tasks for n in pq.read_schema(TileShardFiles(Path(tile.out_dir)).index).names
    }  # as on disk
    assert not {"label", "label_version", "confidence"} & written
    by_key = {s["__key__"]: s for s in samples}
    for row in index.sample(20, random_state=0).itertuples():
        assert by_key[row.key]["json"]["cell_id"] == row.cell_id
        assert Path(row.path).name == row.shard
    meta = samples[0]["json"]
    assert not {"label", "label_version", "confidence"} & set(meta)
    assert set(meta) >= {
        "sample",
        "tile",
        "centroid_um",
        "nucleus_area_um2",
        "cell_area_um2",
        "pixel_size_um",
        "flags",
    }
    assert samples[0]["dapi.npy"].shape == (96, 96) and samples[0]["dapi.npy"].dtype == np.uint16


def test_patch_pixels_equal_a_direct_read(extracted):
    _, root, manifest, _, _, _ = extracted
    with open_plane(manifest.dapi_path, manifest.dapi.ifd) as plane:
        image = np.asarray(plane[:])
    h, w = image.shape
    checked = 0
    for s in read_samples(root / "shards"):
        r, c = s["json"]["origin_px"]
        if r >= 0 and c >= 0 and r + 96 <= h and c + 96 <= w:
            np.testing.assert_array_equal(s["dapi.npy"], image[r : r + 96, c : c + 96])
            checked += 1
        else:
            assert "edge_padded" in s["json"]["flags"]
            assert s["dapi.npy"][max(0, -r), max(0, -c)] == image[max(r, 0), max(c, 0)]
    assert checked > 400


def test_masks_match_polygons(extracted):
    _, root, _, _, tasks, _ = extracted
    checked = 0
    for task in tasks:
        if not len(task.cells):
            continue
        ids, kinds, polys = read_tile_polygons(root / "geometry", task.tile)
        folder = Path(task.out_dir)
        for s in wds.WebDataset(sorted(str(p) for p in folder.glob("shard-*.tar")), shardshuffle=False).decode():
            meta, mask = s["json"], s["mask.npy"]
            if meta["flags"]:
                continue
            r, c = meta["origin_px"]
            own = ids == meta["cell_id"]
            own_nucleus = shapely.union_all(polys[own & (kinds == "nucleus")])
            cell = polys[own & (kinds == "cell")][0]
            rim = shapely.length(own_nucleus) + 4  # a pixel's rim around the outline
            assert abs(nucleus(mask).sum() - shapely.area(own_nucleus)) <= rim
            peri_poly = shapely.difference(cell, own_nucleus)
            assert abs(perinuclear(mask).sum() - shapely.area(peri_poly)) <= rim + shapely.length(cell)
            # Nucleus and perinuclear are disjoint by construction; no neighbour's nucleus is in either:
            others = shapely.union_all(polys[~own & (kinds == "nucleus")])
            yy, xx = np.nonzero(mask > 0)
            inside_other = shapely.contains_xy(others, xx + c + 0.5, yy + r + 0.5)
            assert not inside_other.any()
            checked += 1
    assert checked > 400


def test_rerun_gives_the_same_samples(extracted, tmp_path):
    bundle, root, manifest, store, tasks, _ = extracted
    again = make_tasks(manifest, store, root, tmp_path)
    for a, b in zip(tasks[:20], again[:20], strict=True):
        extract_tile(b)
        ia, ib = Path(a.out_dir), Path(b.out_dir)
        assert TileShardFiles(ia).index.exists() == TileShardFiles(ib).index.exists()
        for shard in ia.glob("shard-*.tar"):
            assert shard.read_bytes() == (ib / shard.name).read_bytes()


def _members(folder: Path) -> dict[str, bytes]:
    import tarfile

    members = {}
    for shard in sorted(folder.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            members.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
    return members


def test_blocks_and_crop_chunks_do_not_change_the_samples(extracted, tmp_path, monkeypatch):
    """Big slides split a tile into blocks and crop its cells in chunks: a tile cut in 60 px blocks and
    chunks of 3 cells (many cells' windows crossing block edges) gives exactly the samples of one block."""
    from xenium_assets.patches import extract
    from xenium_assets.raster import Window

    parts = Window(5, 7, 130, 61).split(60)
    assert max(p.h for p in parts) <= 60 and max(p.w for p in parts) <= 60
    covered = np.zeros((200, 200), dtype=int)
    for p in parts:
        covered[p.slices] += 1
    assert covered.sum() == 130 * 61 and covered[Window(5, 7, 130, 61).slices].min() == 1

    _, root, manifest, store, tasks, _ = extracted
    monkeypatch.setattr(extract, "BLOCK_PX", 60)
    monkeypatch.setattr(extract, "CHUNK_CELLS", 3)
    busiest = sorted(tasks, key=lambda t: len(t.cells))[-3:]
    again = {t.tile: t for t in make_tasks(manifest, store, root, tmp_path)}
    for task in busiest:
        assert grid.tile_window(task.tile, *store.shape).h > 2 * 60  # several blocks each way
        extract_tile(again[task.tile])
        one_block, blocked = _members(Path(task.out_dir)), _members(tmp_path / task.tile)
        assert len(one_block) == 3 * len(task.cells) and one_block == blocked
        index = (
            pq.read_table(TileShardFiles(tmp_path / task.tile).index).to_pandas().sort_values("key", ignore_index=True)
        )
        expected = (
            pq.read_table(TileShardFiles(Path(task.out_dir)).index).to_pandas().sort_values("key", ignore_index=True)
        )
        pd.testing.assert_frame_equal(index, expected)


def test_sample_json_is_what_json_dumps_writes(extracted):
    """The column-wise JSON is byte for byte ``json.dumps`` of each cell's record, odd values included."""
    import dataclasses

    from xenium_assets.patches.extract import _metadata

    task = max(extracted[4], key=lambda t: len(t.cells))
    cells = task.cells.head(6).copy()
    cells["cell_id"] = ['a"b', "ünï", "c\\d", "x", "y", "z"]
    cells["nucleus_area_um2"] = [np.nan, 1.0, 0.123456789012345, 1e-20, 0.5, np.inf]
    cells["n_nuclei"] = [1, 2, 1, 3, 1, 1]
    task = dataclasses.replace(task, cells=cells, resampled=True)
    top, left = np.arange(6) - 3, np.arange(6) * 7
    edge = np.array([True, False, True, False, False, True])
    expected = [
        json.dumps(
            {
                "sample": task.sample,
                "cell_id": c.cell_id,
                "tile": task.tile,
                "nucleus_area_um2": float(c.nucleus_area_um2),
                "cell_area_um2": float(c.cell_area_um2),
                "pixel_size_um": task.pixel_size_um,
                "patch_um": task.spec.size_um,
                "centroid_um": [c.x_um, c.y_um],
                "origin_px": [int(t), int(l_)],
                "flags": [
                    f for f, on in (("edge_padded", e), ("multinucleate", c.n_nuclei > 1), ("resampled", True)) if on
                ],
            }
        ).encode()
        for c, t, l_, e in zip(cells.itertuples(), top, left, edge, strict=True)
    ]
    assert _metadata(task, task.cells, top, left, edge) == expected


def test_patch_masks_give_shared_pixels_to_no_nucleus_and_to_both_outlines():
    """Two cells whose outlines and nuclei overlap: a pixel in both nuclei is in neither nucleus mask (nor
    perinuclear), a pixel in both outlines outside every nucleus is perinuclear to both, whatever the
    polygons' order in the tile's table."""
    from xenium_assets.patches.extract import PatchMasks
    from xenium_assets.patches.geometry import TileRings

    polygons = {
        ("a", "cell"): shapely.box(0, 0, 40, 40),
        ("a", "nucleus"): shapely.box(10, 10, 24, 24),
        ("b", "cell"): shapely.box(30, 0, 70, 40),
        ("b", "nucleus"): shapely.box(20, 14, 50, 30),
    }

    def masks(order):
        keys = [list(polygons)[k] for k in order]
        rings = [shapely.get_coordinates(polygons[k].exterior) for k in keys]
        tile = TileRings.from_ids(
            ids=np.array([k[0] for k in keys], dtype=object),
            kinds=np.array([k[1] for k in keys], dtype=object),
            x=np.concatenate([r[:, 0] for r in rings]),
            y=np.concatenate([r[:, 1] for r in rings]),
            offsets=np.cumsum([0] + [len(r) for r in rings]),
        )
        draw = PatchMasks(tile, 48)
        return draw(draw.owners(np.array(["a", "b"], dtype=object)), np.array([-4, -4]), np.array([-4, 16]))

    a, b = masks([0, 1, 2, 3])
    for order in ([3, 2, 1, 0], [1, 3, 0, 2]):
        np.testing.assert_array_equal(np.stack([a, b]), masks(order))

    def at(window, origin_x, y, x):  # the mask value at image pixel (y, x); both windows start at row -4
        return window[y + 4, x - origin_x]

    assert at(a, -4, 12, 12) == MASK_NUCLEUS and at(b, 16, 20, 45) == MASK_NUCLEUS
    assert at(a, -4, 20, 22) == 0 and at(b, 16, 20, 22) == 0  # in both nuclei: neither cell's
    assert at(a, -4, 5, 35) == MASK_PERINUCLEAR and at(b, 16, 5, 35) == MASK_PERINUCLEAR  # in both outlines
    assert at(a, -4, 20, 35) == 0  # b's nucleus, inside a's outline: never in a's masks
    assert (a == MASK_NUCLEUS).sum() == 14 * 14 - 4 * 10 and (b == MASK_NUCLEUS).sum() == 30 * 16 - 4 * 10


@needs_shared
def test_real_bundle_is_resampled_to_the_target_pixel_size(tmp_path):
    """The Jurkat/Raji crop (1.69 µm/px, origin 1000,1000 µm) gives 20 µm patches at 0.2125 µm/px."""
    manifest, store = prepare(
        JURKAT, tmp_path, "jurkat", pixel_size_um=JURKAT_PIXEL_SIZE, image_origin_um=JURKAT_ORIGIN
    )
    assert store.resampled and store.shape == (1882, 1882)
    results = [extract_tile(t) for t in make_tasks(manifest, store, tmp_path, tmp_path / "shards")]
    skipped = pd.DataFrame([r["skipped"] for r in results]).sum()
    assert skipped.get("off_image", 0) >= 18  # the cells raw_bundle found off the cropped image
    samples = read_samples(tmp_path / "shards")
    assert len(samples) + int(skipped.sum()) == 526
    assert all("resampled" in s["json"]["flags"] for s in samples)
    # Alignment: nuclei are brighter inside their own nucleus mask than in their perinuclear ring.
    brighter = [s["dapi.npy"][s["mask.npy"] == 1].mean() > s["dapi.npy"][s["mask.npy"] == 2].mean() for s in samples]
    assert np.mean(brighter) > 0.8


def test_ring_is_each_nucleus_grown_and_stopped_halfway_to_its_neighbours():
    """Two nuclei 10 px apart, rings of 8 px: each ring reaches 8 px out where it is free and stops at the line
    halfway between them (5 px) where they face each other; no ring pixel is in a nucleus."""
    from xenium_assets.patches.masks import NucleusRings
    from xenium_assets.raster import Window

    polygons = np.array([shapely.box(20, 20, 30, 30), shapely.box(40, 20, 50, 30)])
    rings = NucleusRings(polygons, np.array([0, 1]), ring_px=8.0)
    block = rings.block(Window(0, 0, 70, 70))
    masks = np.zeros((2, 64, 64), dtype=np.uint8)
    block.add_rings(masks, np.array([0, 1]), np.array([0, 0]), np.array([0, 6]))
    a, b = ring(masks[0]), ring(masks[1])
    assert a[25, 12] and not a[25, 11]  # free side: 8 px out from column 20
    assert a[25, 34] and not a[25, 35]  # facing b: columns 30..34, the halfway line at 35
    assert b[25, 35 - 6] and not b[25, 34 - 6]  # b's ring starts at the halfway line, in b's window (origin 6)
    assert not (a & (block.nuclei[:64, :64] > 0)).any()
    none = np.zeros((1, 64, 64), dtype=np.uint8)
    block.add_rings(none, np.array([-1]), np.array([0]), np.array([0]))
    assert not none.any()  # a cell with no polygon gets no ring


def test_rings_in_shards_match_the_whole_slides_nuclei(extracted):
    """Every patch's ring, cut tile by tile and block by block, is the one the slide's nuclei give: ring pixels lie
    within the ring of their own nucleus and no nearer any other nucleus (to a pixel's rounding), and pixels well
    inside that region are ring pixels, at tile edges too."""
    _, root, _, _, tasks, _ = extracted
    spec = tasks[0].spec
    all_ids, all_kinds, all_polys = [], [], []
    for task in tasks:
        ids, kinds, polys = read_tile_polygons(root / "geometry", task.tile)
        all_ids.append(ids), all_kinds.append(kinds), all_polys.append(polys)
    ids, kinds, polys = (np.concatenate(v) for v in (all_ids, all_kinds, all_polys))
    nuclei = kinds == "nucleus"
    ids, polys = ids[nuclei], polys[nuclei]
    unique = shapely.to_wkb(polys)
    _, first = np.unique(unique, return_index=True)
    ids, polys = ids[first], polys[first]
    checked = rings_seen = 0
    for task in [t for t in tasks if len(t.cells)][::2]:
        folder = Path(task.out_dir)
        for s in list(wds.WebDataset(sorted(str(p) for p in folder.glob("shard-*.tar")), shardshuffle=False).decode())[
            ::7
        ]:
            meta, mask = s["json"], s["mask.npy"]
            r, c = meta["origin_px"]
            yy, xx = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
            px, py = (xx + c + 0.5).ravel(), (yy + r + 0.5).ravel()
            points = shapely.points(px, py)
            near = shapely.intersects(polys, shapely.box(c, r, c + mask.shape[1], r + mask.shape[0]).buffer(30))
            d_own, d_other = np.full(px.shape, np.inf), np.full(px.shape, np.inf)
            for poly, owner in zip(polys[near], ids[near], strict=True):
                d = shapely.distance(poly, points)
                if owner == meta["cell_id"]:
                    d_own = np.minimum(d_own, d)
                else:
                    d_other = np.minimum(d_other, d)
            inside_any = (d_own == 0) | (d_other == 0)
            got = ring(mask).ravel()
            assert (d_own[got] <= spec.ring_px + 1).all()
            assert (d_own[got] <= d_other[got] + 1.5).all()
            clear = ~inside_any & (d_own <= spec.ring_px - 1.5) & (d_own + 1.5 < d_other) & ~nucleus(mask).ravel()
            assert got[clear].all()
            rings_seen += int(got.sum() > 0)
            checked += 1
    assert checked > 20 and rings_seen > 0.9 * checked
