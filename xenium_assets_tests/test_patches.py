"""Patch extraction: geometry, masks, shards, atomicity and resampling, checked against direct reads."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely
import webdataset as wds

from xenium_assets.bundle.image import open_plane
from xenium_assets.bundle.manifest import write_manifest
from xenium_assets.bundle.validate import inspect_bundle
from xenium_assets.parallel import thread_runner
from xenium_assets.patches import grid
from xenium_assets.patches.dapi_store import ChunkFiles, create_store, transcode_dapi
from xenium_assets.patches.extract import MASK_NUCLEUS, MASK_PERINUCLEAR, TileTask, extract_tile, tile_tasks
from xenium_assets.patches.geometry import read_tile_polygons, ring_moments, split_by_tile
from xenium_assets.patches.shards import INDEX, read_index
from xenium_assets.raster import Window, read_window, tile_windows
from xenium_assets_tests.conftest import JURKAT, JURKAT_ORIGIN, JURKAT_PIXEL_SIZE, needs_shared

SPEC = grid.PatchSpec()


def _prepare(bundle: Path, root: Path, sample: str, **inspect_kwargs):
    manifest = write_manifest(inspect_bundle(bundle, **inspect_kwargs), sample, root / "raw")
    store = transcode_dapi(manifest, root / "dapi", SPEC.pixel_size_um, thread_runner(2))
    split_by_tile(manifest, SPEC, root / "geometry")
    return manifest, store


def _tasks(manifest, store, root: Path, out: Path, **kwargs) -> list[TileTask]:
    problems = pq.read_table(manifest.cell_problems).to_pandas()
    problems = problems[problems["kind"] == "invalid"]
    return tile_tasks(manifest.sample, store, root / "geometry", problems, list(grid.TILE_KEYS), out, SPEC, **kwargs)


@pytest.fixture(scope="module")
def extracted(bundles, tmp_path_factory):
    bundle = bundles("3")
    root = tmp_path_factory.mktemp("patches")
    manifest, store = _prepare(bundle, root, "s")
    tasks = _tasks(manifest, store, root, root / "shards")
    results = [extract_tile(t) for t in tasks]
    return bundle, root, manifest, store, tasks, results


def _samples(folder: Path) -> list[dict]:
    files = sorted(str(p) for p in folder.glob("*/shard-*.tar"))
    return list(wds.WebDataset(files, shardshuffle=False, empty_check=False).decode())


def test_transcoded_store_equals_the_tiff(extracted):
    _, _, manifest, store, _, _ = extracted
    with open_plane(manifest.dapi_path, manifest.dapi.ifd) as plane:
        np.testing.assert_array_equal(store.open()[:], plane[:])
    assert store.percentiles["p1"] < store.percentiles["p50"] < store.percentiles["p99"]


@pytest.mark.parametrize("tile", [(64, 48), None], ids=["tiled", "strips"])
def test_decode_window_equals_the_zarr_store(tmp_path, tile):
    """The transcode's reader decodes the tiles under a window itself: windows across tile edges, at the image's
    far edges (partial tiles) and in one tile read what tifffile's zarr store reads; an untiled page goes through
    the store."""
    import tifffile

    from xenium_assets.bundle.image import decode_window, open_plane

    image = np.random.default_rng(5).integers(0, 65535, (300, 250), dtype=np.uint16)
    path = tmp_path / "plane.tif"
    with tifffile.TiffWriter(path) as tif:  # two series: the plane read is the second page, IFD 1
        for plane in (image // 2, image):
            tif.write(plane, tile=tile, compression="zlib")
    for rows, cols in (
        (slice(0, 300), slice(0, 250)),
        (slice(60, 200), slice(40, 101)),
        (slice(290, 300), slice(3, 5)),
    ):
        with open_plane(path, 1) as plane:
            expected = np.asarray(plane[rows, cols])
        np.testing.assert_array_equal(decode_window(path, 1, (rows, cols)), expected)
        np.testing.assert_array_equal(expected, image[rows, cols])


def test_chunk_files_read_what_zarr_writes_and_write_what_zarr_reads(tmp_path):
    """The store's hot paths read and write its chunk files directly; zarr must agree with them both ways."""
    import zarr

    shape = (1300, 1100)  # partial chunks at the far edges
    image = np.random.default_rng(3).integers(0, 65535, shape, dtype=np.uint16)
    image[:600, :600] = 0  # an empty chunk, which zarr does not write
    by_zarr = tmp_path / "by_zarr.zarr"
    create_store(by_zarr, shape)
    zarr.open_array(str(by_zarr), mode="r+")[:] = image
    assert not (by_zarr / "c" / "0" / "0").exists() and (by_zarr / "c" / "0" / "1").exists()
    # A store written with zstd, as dapi_zarr did before blosc, still reads.
    by_zstd = tmp_path / "by_zstd.zarr"
    zarr.create_array(
        store=str(by_zstd), shape=shape, chunks=(512, 512), dtype="uint16", compressors=zarr.codecs.ZstdCodec(level=1)
    )[:] = image
    windows = (Window(0, 0, *shape), Window(-48, -48, 600, 700), Window(1200, 1000, 200, 200), Window(2000, 0, 5, 5))
    for files in (ChunkFiles.open(by_zarr), ChunkFiles.open(by_zstd)):
        for win in windows:
            np.testing.assert_array_equal(files.read(win), read_window(image, win))
    by_files = tmp_path / "by_files.zarr"
    create_store(by_files, shape)
    for block in tile_windows(*shape, 1024):
        ChunkFiles.open(by_files).write_block(block, image[block.slices])
    np.testing.assert_array_equal(zarr.open_array(str(by_files), mode="r")[:], image)
    with pytest.raises(ValueError, match="does not start on a 512-px chunk corner"):
        ChunkFiles.open(by_files).write_block(Window(100, 0, 10, 10), image[:10, :10])
    (by_files / "c" / "1" / "1").write_bytes(b"cut short")
    with pytest.raises(ValueError, match=f"{by_files / 'c' / '1' / '1'}: not a readable chunk"):
        ChunkFiles.open(by_files).read(Window(500, 500, 100, 100))
    other = tmp_path / "other.zarr"
    zarr.create_array(store=str(other), shape=shape, chunks=(256, 256), dtype="uint16")
    gzip = tmp_path / "gzip.zarr"
    zarr.create_array(
        store=str(gzip), shape=shape, chunks=(512, 512), dtype="uint16", compressors=zarr.codecs.GzipCodec()
    )
    for path in (other, gzip):
        with pytest.raises(ValueError, match=f"{path}: not a DAPI store as dapi_zarr writes it"):
            ChunkFiles.open(path)


def test_geometry_split_on_another_pixel_grid_is_refused(extracted, tmp_path):
    """tile_geometry no longer waits for dapi_zarr, so the tile tasks check the two used the same grid."""
    import dataclasses

    _, root, manifest, store, _, _ = extracted
    other = dataclasses.replace(store, shape=(store.shape[0] // 2, store.shape[1] // 2), pixel_size_um=0.425)
    with pytest.raises(ValueError, match="re-materialize tile_geometry and dapi_zarr with the same patch geometry"):
        _tasks(manifest, other, root, tmp_path)


def test_csv_only_bundle_gives_the_same_samples(bundles, bundle_copy, tmp_path):
    """A bundle with only .csv.gz tables (older instrument software) gives the samples its Parquet twin gives."""
    source = bundles("2", csv=True)
    csv_only = bundle_copy("2", csv=True)
    for name in ("cells", "cell_boundaries", "nucleus_boundaries", "transcripts"):
        (csv_only / f"{name}.parquet").unlink(missing_ok=True)
    made = {}
    for name, bundle in (("parquet", source), ("csv", csv_only)):
        manifest, store = _prepare(bundle, tmp_path / name, "s")
        assert str(manifest.path("cell_boundaries")).endswith(".csv.gz") == (name == "csv")
        for task in _tasks(manifest, store, tmp_path / name, tmp_path / name / "shards"):
            extract_tile(task)
        made[name] = _samples(tmp_path / name / "shards")
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
    samples = _samples(root / "shards")
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
    written = {n for tile in tasks for n in pq.read_schema(Path(tile.out_dir) / INDEX).names}  # as on disk
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
    for s in _samples(root / "shards"):
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
            nucleus = shapely.union_all(polys[own & (kinds == "nucleus")])
            cell = polys[own & (kinds == "cell")][0]
            rim = shapely.length(nucleus) + 4  # a pixel's rim around the outline
            assert abs((mask == MASK_NUCLEUS).sum() - shapely.area(nucleus)) <= rim
            peri_poly = shapely.difference(cell, nucleus)
            assert abs((mask == MASK_PERINUCLEAR).sum() - shapely.area(peri_poly)) <= rim + shapely.length(cell)
            # Nucleus and perinuclear are disjoint by construction; no neighbour's nucleus is in either:
            others = shapely.union_all(polys[~own & (kinds == "nucleus")])
            yy, xx = np.nonzero(mask > 0)
            inside_other = shapely.contains_xy(others, xx + c + 0.5, yy + r + 0.5)
            assert not inside_other.any()
            checked += 1
    assert checked > 400


def test_rerun_gives_the_same_samples(extracted, tmp_path):
    bundle, root, manifest, store, tasks, _ = extracted
    again = _tasks(manifest, store, root, tmp_path)
    for a, b in zip(tasks[:20], again[:20], strict=True):
        extract_tile(b)
        ia, ib = Path(a.out_dir), Path(b.out_dir)
        assert (ia / INDEX).exists() == (ib / INDEX).exists()
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
    again = {t.tile: t for t in _tasks(manifest, store, root, tmp_path)}
    for task in busiest:
        assert grid.tile_window(task.tile, *store.shape).h > 2 * 60  # several blocks each way
        extract_tile(again[task.tile])
        one_block, blocked = _members(Path(task.out_dir)), _members(tmp_path / task.tile)
        assert len(one_block) == 3 * len(task.cells) and one_block == blocked
        index = pq.read_table(tmp_path / task.tile / INDEX).to_pandas().sort_values("key", ignore_index=True)
        expected = pq.read_table(Path(task.out_dir) / INDEX).to_pandas().sort_values("key", ignore_index=True)
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


def test_overlaps_are_drawn_by_layer_and_place_never_by_table_order():
    """Overlaps are resolved by layer (nuclei over cells) and by place, not by the table's order (cell ids):
    with shared edges given by id, the null-slide test of the training claimed signal (see PolygonRaster)."""
    from xenium_assets.raster import PolygonRaster, Window

    polys = np.array([shapely.box(0, 0, 10, 10), shapely.box(5, 0, 15, 10), shapely.box(6, 2, 9, 8)])
    labels, layers = np.array([1, 2, 3]), np.array([0, 0, 1])
    win = Window(0, 0, 10, 15)
    drawn = PolygonRaster(polys, labels, layers).window(win)
    for order in ([2, 1, 0], [1, 2, 0], [0, 2, 1]):
        np.testing.assert_array_equal(PolygonRaster(polys[order], labels[order], layers[order]).window(win), drawn)
    assert (drawn[2:8, 6:9] == 3).all()  # the upper layer (a nucleus) wins wherever it is in the table
    assert set(np.unique(drawn[:, 5:10])) == {2, 3}  # the overlap of the two cells went to one, whatever the order


def test_ring_moments_are_shapely_area_and_centroid():
    """The nucleus centres and areas come from shoelace sums, not shapely polygons: they must agree with shapely
    for rings in either orientation, closed or open, far from the origin, and give zero moments (not NaN) for
    a ring of no area."""
    rng = np.random.default_rng(5)
    rings = []
    for k in range(40):
        n = int(rng.integers(4, 14))
        angle = np.sort(rng.uniform(0, 2 * np.pi, n))
        xy = rng.uniform(1000, 4000, 2) + rng.uniform(2, 8, (n, 1)) * np.column_stack([np.cos(angle), np.sin(angle)])
        rings.append(xy[::-1] if k % 2 else np.vstack([xy, xy[:1]]))
    rings.append(np.array([[5.0, 5.0], [6.0, 6.0], [7.0, 7.0], [5.0, 5.0]]))  # no area
    offsets = np.cumsum([0] + [len(r) for r in rings])
    xy = np.vstack(rings)
    area, moment_x, moment_y = ring_moments(xy[:, 0], xy[:, 1], offsets)
    polygons = shapely.polygons([shapely.linearrings(r) for r in rings])
    np.testing.assert_allclose(area, shapely.area(polygons), rtol=1e-12)
    centre = shapely.get_coordinates(shapely.centroid(polygons[:-1]))
    np.testing.assert_allclose(moment_x[:-1] / area[:-1], centre[:, 0], rtol=1e-12)
    np.testing.assert_allclose(moment_y[:-1] / area[:-1], centre[:, 1], rtol=1e-12)
    assert area[-1] == moment_x[-1] == moment_y[-1] == 0


def test_winding_counts_are_shapely_containment_at_pixel_centres():
    """The scan conversion behind the masks: for valid polygons in either orientation, closed or open rings,
    windows partly off the polygons and polygons partly off the windows, a pixel counts exactly where
    shapely says its centre is inside; overlapping rings add their weights."""
    from xenium_assets.patches.kernels import winding_counts

    rng = np.random.default_rng(3)
    rings, items, weights = [], [], []
    while len(rings) < 60:
        n = int(rng.integers(4, 16))
        angle = np.sort(rng.uniform(0, 2 * np.pi, n))
        radius = rng.uniform(3, 30, n)
        centre = rng.uniform(-20, 70, 2)
        xy = centre + np.column_stack([radius * np.cos(angle), radius * np.sin(angle)])
        if not shapely.Polygon(xy).is_valid:
            continue
        xy = xy[::-1] if len(rings) % 2 else np.vstack([xy, xy[:1]])  # clockwise open, anticlockwise closed
        rings.append(xy)
        items.append(len(rings) % 4)
        weights.append(int(rng.choice([1, 16, 256])))
    top, left = np.array([0, -7, 20, 33]), np.array([0, 11, -5, 40])
    offsets = np.cumsum([0] + [len(r) for r in rings])
    xy = np.vstack(rings)
    size = 48
    order = np.argsort(items, kind="stable")  # the kernel takes the (window, ring) pairs grouped by window
    window, weight = np.array(items)[order], np.array(weights)[order]
    counts = winding_counts(xy[:, 0], xy[:, 1], offsets[:-1], np.diff(offsets), window, order, weight, top, left, size)
    assert counts.shape == (4, size, size)
    rows, cols = np.mgrid[0:size, 0:size]
    for i in range(4):
        expected = np.zeros((size, size), dtype=np.int64)
        for ring, item, weight in zip(rings, items, weights, strict=True):
            if item == i:
                inside = shapely.contains_xy(shapely.Polygon(ring), left[i] + cols + 0.5, top[i] + rows + 0.5)
                expected += weight * inside
        np.testing.assert_array_equal(counts[i], expected)
    assert counts.any()


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


def test_tar_headers_equal_the_scalar_ones_and_tarfile_reads_them():
    import io
    import tarfile

    from xenium_assets.patches.shards import _tar_header, tar_headers

    names = ["s/1.dapi.npy", "sample-ü/cell_%d.json", "x" * 100]
    sizes = np.array([0, 1, 8**11 - 1])
    headers = tar_headers(names, sizes)
    assert [h.tobytes() for h in headers] == [_tar_header(n, int(z)) for n, z in zip(names, sizes, strict=True)]
    long = ["d" * 40 + "/" + "f" * 90]  # over 100 bytes: the ustar prefix field, on the scalar path
    assert tar_headers(long, np.array([3]))[0].tobytes() == _tar_header(long[0], 3)
    tar = io.BytesIO(_tar_header(long[0], 3) + b"abc".ljust(512, b"\0") + b"\0" * 1024)
    with tarfile.open(fileobj=tar) as t:
        assert t.getnames() == long and t.extractfile(long[0]).read() == b"abc"


def test_shards_are_cut_by_count_and_by_bytes(tmp_path):
    """Chunks that straddle a shard's limits are split there; samples keep their order across shards. A chunk's
    JSON that ends a tar block short of its longest is padded with spaces; every JSON reads back as written."""
    from xenium_assets.patches.shards import TileShardWriter

    rng = np.random.default_rng(0)
    keys = [f"s/c{i:03d}" for i in range(50)]
    dapi = rng.integers(0, 65535, (50, 8, 8), dtype=np.uint16)
    notes = ["x" * int(n) for n in rng.integers(0, 600, 50)]  # one JSON block or two
    notes[:16] = ["x" * 100] * 16  # the first chunk's JSONs all fit a block: no padding
    one_sample = 3 * 512 + 2 * 512 + 512  # three headers, two padded arrays, a short JSON
    for max_count, max_bytes, per_shard in ((7, 1e9, 7), (1000, 4 * one_sample, 4)):
        folder = tmp_path / f"{max_count}"
        writer = TileShardWriter(folder, max_count=max_count, max_bytes=max_bytes)
        shard_of = []
        for first in range(0, 50, 16):  # chunks of 16 against shards of 7 or 4 samples
            jsons = [json.dumps({"i": i, "note": notes[i]}).encode() for i in range(first, min(first + 16, 50))]
            chunk = writer.chunk(keys[first : first + 16], jsons, (8, 8))
            chunk.dapi[...] = dapi[first : first + 16]
            chunk.mask[...] = 1
            shard_of += writer.write(chunk)
        shards_written = writer.close()
        samples = list(wds.WebDataset(sorted(str(p) for p in folder.glob("shard-*.tar")), shardshuffle=False).decode())
        assert [s["__key__"] for s in samples] == keys
        assert [s["json"] for s in samples] == [{"i": i, "note": n} for i, n in enumerate(notes)]
        np.testing.assert_array_equal(np.stack([s["dapi.npy"] for s in samples]), dapi)
        # By bytes: 4 one-block-JSON samples fill a shard; of samples with two-block JSON, the 4th crosses the limit.
        assert len(shards_written) == -(-50 // per_shard) and shard_of == [
            shards_written[i // per_shard] for i in range(50)
        ]
        texts = {}
        for shard in shards_written:
            with tarfile.open(folder / shard) as tar:
                texts |= {m.name: tar.extractfile(m).read() for m in tar if m.name.endswith(".json")}
        assert texts[f"{keys[0]}.json"] == json.dumps({"i": 0, "note": notes[0]}).encode()  # nothing to pad
        assert any(text.endswith(b" ") for text in texts.values())  # padded ones, which still decoded above


def test_tile_polygon_files_of_an_older_tile_geometry_or_cut_short_get_a_clear_error(tmp_path):
    """Tiles' polygons are Arrow IPC files now: an older tile_geometry's Parquet file, or a file cut short, names
    itself and the fix instead of reading as a tile without polygons."""
    from xenium_assets.patches.geometry import TILES_DIR, read_tile_rings

    tiles = tmp_path / TILES_DIR
    tiles.mkdir()
    (tiles / "r0c0.parquet").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match=r"r0c0\.parquet: an older tile_geometry's file; re-materialize tile_geometry"):
        read_tile_rings(tmp_path, "r0c0")
    (tiles / "r0c1.arrow").write_bytes(b"ARROW1\0\0cut")
    with pytest.raises(ValueError, match=r"r0c1\.arrow: not readable .*re-materialize tile_geometry"):
        read_tile_rings(tmp_path, "r0c1")
    assert len(read_tile_rings(tmp_path, "r0c2").ids) == 0  # no file: a tile without polygons


def test_reused_chunk_buffers_write_the_same_headers_as_fresh_ones(tmp_path):
    """A writer reuses a chunk's buffer for the next; after a chunk of names too long for ustar's name field (the
    prefix field then holds their folders), short names must not inherit them."""
    from xenium_assets.patches.shards import TileShardWriter, _tar_header

    writer = TileShardWriter(tmp_path)
    keys = [["s/a", "s/b"], ["x" * 60 + "/" + "y" * 45, "s/c"], ["s/d", "s/e"], ["t/f", "t/g"]]
    for chunk_keys in keys:
        chunk = writer.chunk(chunk_keys, [json.dumps({"k": k}).encode() for k in chunk_keys], (4, 4))
        chunk.dapi[...], chunk.mask[...] = 7, 1
        writer.write(chunk)
    (shard,) = writer.close()
    with tarfile.open(tmp_path / shard) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [
            f"{k}.{e}" for ks in keys for k in ks for e in ("dapi.npy", "mask.npy", "json")
        ]
        raw = (tmp_path / shard).read_bytes()
        for m in members:
            assert raw[m.offset : m.offset + 512] == _tar_header(m.name, m.size)
            if m.name.endswith(".json"):
                assert json.loads(tar.extractfile(m).read()) == {"k": m.name[: -len(".json")]}


def _write_two_chunks(folder: Path, monkeypatch) -> tuple[bytes, list[int]]:
    """The bytes of a one-shard tile of two chunks, and the open tar's file flags at each chunk's write."""
    import fcntl

    from xenium_assets.patches import shards

    flags, write = [], shards._write

    def recording(fd, data):
        flags.append(fcntl.fcntl(fd, fcntl.F_GETFL))
        write(fd, data)

    monkeypatch.setattr(shards, "_write", recording)
    writer = shards.TileShardWriter(folder)
    for first in (0, 3):
        keys = [f"s/c{i}" for i in range(first, first + 3)]
        chunk = writer.chunk(keys, [json.dumps({"k": k}).encode() for k in keys], (16, 16))
        chunk.dapi[...] = np.arange(256, dtype=np.uint16).reshape(16, 16) + first
        chunk.mask[...] = first
        writer.write(chunk)
    (shard,) = writer.close()
    monkeypatch.setattr(shards, "_write", write)
    return (folder / shard).read_bytes(), flags


@pytest.mark.skipif(not hasattr(__import__("os"), "O_DIRECT"), reason="O_DIRECT is Linux's")
def test_shards_bypass_the_page_cache_and_fall_back_to_plain_writes_of_the_same_bytes(tmp_path, monkeypatch):
    """Direct writes on a disk filesystem; for a buffer direct I/O refuses (not block-aligned: as on a filesystem
    with larger blocks), plain writes of the same bytes."""
    import os

    from xenium_assets.patches import shards

    try:
        os.close(os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
    except OSError:
        pytest.skip(f"{tmp_path}'s filesystem refuses O_DIRECT")
    direct, flags = _write_two_chunks(tmp_path / "disk", monkeypatch)
    assert len(flags) == 2 and all(f & os.O_DIRECT for f in flags)
    samples = list(wds.WebDataset(str(next((tmp_path / "disk").glob("shard-*.tar"))), shardshuffle=False).decode())
    assert [s["__key__"] for s in samples] == [f"s/c{i}" for i in range(6)]
    np.testing.assert_array_equal(samples[4]["dapi.npy"], np.arange(256).reshape(16, 16) + 3)

    def unaligned(n: int, alignment: int = 4096) -> np.ndarray:
        return np.zeros(n + 1, dtype=np.uint8)[1:]  # one byte off any block: direct I/O refuses it (EINVAL)

    monkeypatch.setattr(shards, "aligned_bytes", unaligned)
    fallen_back, flags = _write_two_chunks(tmp_path / "unaligned", monkeypatch)
    assert flags[0] & os.O_DIRECT and not flags[1] & os.O_DIRECT and fallen_back == direct


def test_a_failed_shard_write_is_raised_with_its_file_and_publishes_nothing(tmp_path, monkeypatch):
    """The writer thread's error (here a full disk on the second chunk) reaches the caller with the tar's name, and
    no later write runs: the tar keeps its temporary name."""
    import errno
    import os

    from xenium_assets.patches import shards

    calls, write = [], shards._write

    def full_disk(fd, data):
        calls.append(len(data))
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(fd, data)

    monkeypatch.setattr(shards, "_write", full_disk)
    writer = shards.TileShardWriter(tmp_path)
    with pytest.raises(OSError, match=r"No space left on device: '.*/\.shard-00000\.tar\.partial-"):
        try:  # as extract_tile does
            for first in range(0, 12, 3):
                keys = [f"s/c{i}" for i in range(first, first + 3)]
                chunk = writer.chunk(keys, [b"{}"] * 3, (4, 4))
                chunk.dapi[...], chunk.mask[...] = 1, 1
                writer.write(chunk)
        finally:
            writer.close()
    assert len(calls) == 2 and writer._fd is None
    assert not list(tmp_path.glob("shard-*.tar")) and list(tmp_path.glob(".shard-*"))


KILLER = textwrap.dedent(
    """
    import os, pickle, signal, sys
    from xenium_assets.patches import shards
    from xenium_assets.patches.extract import extract_tile
    task = pickle.load(open(sys.argv[1], "rb"))
    original, calls = shards._write, []
    def write(fd, data):
        calls.append(1)
        if len(calls) == 3:  # the third shard's samples: write half of their bytes, then die
            original(fd, data[: len(data) // 1024 * 512])
            os.kill(os.getpid(), signal.SIGKILL)  # mid-tile, mid-shard: no cleanup code runs
        original(fd, data)
    shards._write = write
    extract_tile(task)
    """
)


def test_killed_worker_leaves_no_half_written_shard(extracted, tmp_path):
    import dataclasses
    import pickle

    _, root, manifest, store, tasks, _ = extracted
    task = max(tasks, key=lambda t: len(t.cells))
    task = dataclasses.replace(task, out_dir=str(tmp_path / task.tile), max_per_shard=2)
    (tmp_path / "task.pkl").write_bytes(pickle.dumps(task))
    (tmp_path / "killer.py").write_text(KILLER)
    proc = subprocess.run([sys.executable, str(tmp_path / "killer.py"), str(tmp_path / "task.pkl")], timeout=120)
    assert proc.returncode == -9
    folder = Path(task.out_dir)
    published = sorted(folder.glob("shard-*.tar"))
    assert len(published) == 2 and not (folder / INDEX).exists()
    for shard in published:  # what carries a final name is complete
        assert len(list(wds.WebDataset(str(shard), shardshuffle=False))) == 2
    assert list(folder.glob(".shard-*"))  # the interrupted tar kept its temporary name
    extract_tile(task)
    assert not list(folder.glob(".shard-*"))
    index = pq.read_table(folder / INDEX).to_pandas()
    assert len(index) == len(task.cells) and len(list(folder.glob("shard-*.tar"))) == -(-len(task.cells) // 2)
    keys = [
        s["__key__"] for s in wds.WebDataset(sorted(str(p) for p in folder.glob("shard-*.tar")), shardshuffle=False)
    ]
    assert keys == list(index["key"])


@needs_shared
def test_real_bundle_is_resampled_to_the_target_pixel_size(tmp_path):
    """The Jurkat/Raji crop (1.69 µm/px, origin 1000,1000 µm) gives 20 µm patches at 0.2125 µm/px."""
    manifest, store = _prepare(
        JURKAT, tmp_path, "jurkat", pixel_size_um=JURKAT_PIXEL_SIZE, image_origin_um=JURKAT_ORIGIN
    )
    assert store.resampled and store.shape == (1882, 1882)
    results = [extract_tile(t) for t in _tasks(manifest, store, tmp_path, tmp_path / "shards")]
    skipped = pd.DataFrame([r["skipped"] for r in results]).sum()
    assert skipped.get("off_image", 0) >= 18  # the cells raw_bundle found off the cropped image
    samples = _samples(tmp_path / "shards")
    assert len(samples) + int(skipped.sum()) == 526
    assert all("resampled" in s["json"]["flags"] for s in samples)
    # Alignment: nuclei are brighter inside their own nucleus mask than in their perinuclear ring.
    brighter = [s["dapi.npy"][s["mask.npy"] == 1].mean() > s["dapi.npy"][s["mask.npy"] == 2].mean() for s in samples]
    assert np.mean(brighter) > 0.8
