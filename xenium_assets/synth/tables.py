"""Tabular files of a synthetic bundle: cells, boundaries, transcripts, the cell-feature matrix
(HDF5 and MTX), the instrument's clustering, and experiment.xenium — typed per XOA release.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import scipy.io
import scipy.sparse as sp

from xenium_assets.formats import (
    CLUSTERS_CSV,
    PROJECTION_CSV,
    UNASSIGNED_INT,
    UNASSIGNED_STR,
    Col,
    FeatureType,
    XeniumFile,
)
from xenium_assets.synth.profiles import XoaProfile

# Name patterns and numbering of control features, as seen in real panels.
_CONTROL_NAMES = {
    FeatureType.NEG_PROBE: ("NegControlProbe_{:05d}", 42, "negative_control_probe"),
    FeatureType.NEG_CODEWORD: ("NegControlCodeword_{:04d}", 500, "negative_control_codeword"),
    FeatureType.UNASSIGNED: ("UnassignedCodeword_{:04d}", 6, "unassigned_codeword"),
    FeatureType.BLANK: ("BLANK_{:04d}", 70, "unassigned_codeword"),
    FeatureType.DEPRECATED: ("DeprecatedCodeword_{:04d}", 2162, "deprecated_codeword"),
    FeatureType.GENOMIC: ("Intergenic_Region_{:d}", 24000, "genomic_control_probe"),
}
_COUNT_COLUMN = {
    FeatureType.GENE: "transcript_counts",
    FeatureType.NEG_PROBE: "control_probe_counts",
    FeatureType.NEG_CODEWORD: "control_codeword_counts",
    FeatureType.BLANK: "control_codeword_counts",
    FeatureType.UNASSIGNED: "unassigned_codeword_counts",
    FeatureType.DEPRECATED: "deprecated_codeword_counts",
    FeatureType.GENOMIC: "genomic_control_counts",
}
CONTROLS_PER_TYPE = 4
PARQUET_COMPRESSION = "zstd"


@dataclass(frozen=True)
class Features:
    """The panel as the matrix lists it: genes first, then controls grouped by type."""

    names: np.ndarray
    ids: np.ndarray
    types: np.ndarray
    category: np.ndarray  # codeword_category of transcripts.parquet (XOA >= 3)

    def __len__(self) -> int:
        return len(self.names)


def build_features(genes: tuple[str, ...], profile: XoaProfile) -> Features:
    names, ids, types, category = [], [], [], []
    for i, g in enumerate(genes):
        names.append(g)
        ids.append(f"ENSG9{i + 1:010d}")  # ENSG9... is not a real Ensembl id: these genes are synthetic
        types.append(FeatureType.GENE.value)
        category.append("predesigned_gene")
    for ftype in profile.control_types:
        pattern, start, cat = _CONTROL_NAMES[ftype]
        for j in range(CONTROLS_PER_TYPE):
            name = pattern.format(start + j)
            names.append(name)
            ids.append(name)  # real controls have id == name
            types.append(ftype.value)
            category.append(cat)
    return Features(np.array(names), np.array(ids), np.array(types), np.array(category))


def _id_array(ids: np.ndarray, profile: XoaProfile, binary_allowed: bool = True) -> pa.Array:
    """cell_id column typed as the release writes it."""
    if not profile.string_ids:
        return pa.array(ids.astype(np.int32))
    if profile.binary_parquet_ids and binary_allowed:
        return pa.array(np.char.encode(ids.astype("U"), "ascii").tolist(), type=pa.binary())
    return pa.array(ids.astype("U").tolist(), type=pa.string())


def _write_csv_gz(table: pa.Table, path: Path) -> None:
    """CSV variant: binary ids become text, as XOA's CSVs have them."""
    cols = {}
    for name in table.column_names:
        col = table.column(name)
        cols[name] = col.cast(pa.string()) if pa.types.is_binary(col.type) else col
    with pa.CompressedOutputStream(str(path), "gzip") as out:
        pacsv.write_csv(pa.table(cols), out)


def count_columns(features: Features, counts: np.ndarray, profile: XoaProfile) -> dict[str, np.ndarray]:
    """Per-cell sums by feature class, ending with total_counts (the sum of all of them)."""
    cols: dict[str, np.ndarray] = {}
    for ftype in (FeatureType.GENE, *profile.control_types):
        key = _COUNT_COLUMN[ftype]
        add = counts[:, features.types == ftype.value].sum(axis=1)
        cols[key] = cols.get(key, 0) + add
    cols["total_counts"] = counts.sum(axis=1)
    return {k: np.asarray(v, dtype=np.int64 if profile.major >= 3 else np.int32) for k, v in cols.items()}


def write_cells(
    root: Path,
    ids: np.ndarray,
    centroid_um: np.ndarray,
    cell_area: np.ndarray,
    nucleus_area: np.ndarray,
    nucleus_count: np.ndarray,
    counts: dict[str, np.ndarray],
    profile: XoaProfile,
    csv: bool,
) -> None:
    cols: dict[str, pa.Array] = {
        Col.CELL_ID: _id_array(ids, profile),
        Col.X_CENTROID: pa.array(centroid_um[:, 0]),
        Col.Y_CENTROID: pa.array(centroid_um[:, 1]),
    }
    cols.update({k: pa.array(v) for k, v in counts.items()})
    cols[Col.CELL_AREA] = pa.array(cell_area)
    cols[Col.NUCLEUS_AREA] = pa.array(nucleus_area)
    if profile.multinucleate:
        cols[Col.NUCLEUS_COUNT] = pa.array(nucleus_count.astype(np.int64))
        method = np.where(
            nucleus_count > 0,
            "Segmented by nucleus expansion of 5.0µm",
            "Segmented by boundary stain (ATP1A1+CD45+E-Cadherin)",
        )
        cols["segmentation_method"] = pa.array(method.tolist())
    table = pa.table({str(k): v for k, v in cols.items()})
    pq.write_table(table, root / XeniumFile.CELLS_PARQUET, compression=PARQUET_COMPRESSION)
    if csv:
        _write_csv_gz(table, root / XeniumFile.CELLS_CSV)


def write_boundaries(
    root: Path,
    filename: XeniumFile,
    csv_name: XeniumFile,
    rings: np.ndarray,
    owner_ids: np.ndarray,
    label_id: np.ndarray,
    profile: XoaProfile,
    csv: bool,
) -> None:
    """Long format, 13 rows per polygon (12 vertices + closure), polygons contiguous."""
    k, v, _ = rings.shape
    closed = np.concatenate([rings, rings[:, :1]], axis=1).reshape(-1, 2)
    rows = np.repeat(np.arange(k), v + 1)
    cols = {
        Col.CELL_ID: _id_array(owner_ids[rows], profile),
        Col.VERTEX_X: pa.array(closed[:, 0].astype(np.float32)),
        Col.VERTEX_Y: pa.array(closed[:, 1].astype(np.float32)),
    }
    if profile.label_id:
        cols[Col.LABEL_ID] = pa.array(label_id[rows].astype(np.int32))
    table = pa.table({str(c): a for c, a in cols.items()})
    pq.write_table(table, root / filename, compression=PARQUET_COMPRESSION)
    if csv:
        _write_csv_gz(table, root / csv_name)


def write_matrix_h5(root: Path, ids: np.ndarray, features: Features, counts: np.ndarray) -> None:
    """10x HDF5 as XOA writes it: CSC features x cells, gzip, fixed-length byte strings."""
    csc = sp.csc_matrix(counts.T)
    csc.sort_indices()

    def fixed(a: np.ndarray) -> np.ndarray:
        return np.char.encode(a.astype("U"), "ascii")  # numpy picks the fixed width |S<max len>

    gz = dict(compression="gzip", compression_opts=4, shuffle=True)
    with h5py.File(root / XeniumFile.MATRIX_H5, "w") as f:
        f.attrs["filetype"] = "matrix"
        f.attrs["library_ids"] = np.array([b"0000000_0000000"])
        f.attrs["original_gem_groups"] = np.array([1])
        f.attrs["version"] = 2
        m = f.create_group("matrix")
        m.create_dataset("barcodes", data=fixed(ids.astype("U")), **gz)
        m.create_dataset("data", data=csc.data.astype(np.int32), **gz)
        m.create_dataset("indices", data=csc.indices.astype(np.int64), **gz)
        m.create_dataset("indptr", data=csc.indptr.astype(np.int64), **gz)
        m.create_dataset("shape", data=np.array(csc.shape, dtype=np.int32))
        ft = m.create_group("features")
        ft.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
        ft.create_dataset("feature_type", data=fixed(features.types), **gz)
        ft.create_dataset("genome", data=np.full(len(features), b"Unknown", dtype="S7"), **gz)
        ft.create_dataset("id", data=fixed(features.ids), **gz)
        ft.create_dataset("name", data=fixed(features.names), **gz)


def write_matrix_mtx(root: Path, ids: np.ndarray, features: Features, counts: np.ndarray) -> None:
    """MEX folder: barcodes, features (id, name, type; no header) and the features x cells matrix."""
    folder = root / XeniumFile.MATRIX_MTX_DIR
    folder.mkdir()
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as f:
        f.write("\n".join(ids.astype("U")) + "\n")
    with gzip.open(folder / "features.tsv.gz", "wt") as f:
        f.writelines(f"{i}\t{n}\t{t}\n" for i, n, t in zip(features.ids, features.names, features.types, strict=True))
    with gzip.open(folder / "matrix.mtx.gz", "wb") as f:
        scipy.io.mmwrite(f, sp.coo_matrix(counts.T), field="integer")


def write_matrix_zarr(root: Path, ids: np.ndarray, features: Features, counts: np.ndarray, string_ids: bool) -> None:
    """Xenium Explorer's cell_feature_matrix.zarr.zip: features x cells CSR, ids as uint32 (prefix, suffix)."""
    import numcodecs
    import zarr
    from zarr.storage import ZipStore

    from xenium_assets.bundle.ids import prefix_from_ids

    by_feature = sp.csr_matrix(counts.T)
    attrs = {
        "major_version": 3,
        "minor_version": 0,
        "number_cells": len(ids),
        "number_features": len(features),
        "feature_keys": features.names.tolist(),
        "feature_ids": features.ids.tolist(),
        "feature_types": features.types.tolist(),
    }
    store = ZipStore(root / XeniumFile.MATRIX_ZARR, mode="w")
    try:
        group = zarr.open_group(store, mode="w", zarr_format=2).create_group("cell_features", attributes=attrs)
        cell_id = np.column_stack(prefix_from_ids(ids)) if string_ids else ids
        codec = numcodecs.Zstd(level=3)
        group.create_array("cell_id", data=cell_id.astype(np.uint32), compressors=codec)
        for name in ("data", "indices", "indptr"):
            group.create_array(name, data=getattr(by_feature, name).astype(np.uint32), compressors=codec)
    finally:
        store.close()


def experiment_json(
    profile: XoaProfile,
    *,
    run_name: str,
    region_name: str,
    n_cells: int,
    n_transcripts: int,
    pixel_size: float,
    focus_path: str,
    panel_targets: int,
) -> dict:
    spec = {
        "run_name": run_name,
        "run_start_time": "2026-01-01T00:00:00Z",
        "region_name": region_name,
        "preservation_method": "FFPE",
        "num_cells": n_cells,
        "num_transcripts": n_transcripts,
        "transcripts_per_cell": round(n_transcripts / max(n_cells, 1), 1),
        "panel_name": "xenium-assets synthetic panel",
        "panel_organism": "Human",
        "panel_tissue_type": "synthetic",
        "panel_num_targets_predesigned": panel_targets,
        "panel_num_targets_custom": 0,
        "pixel_size": pixel_size,
        "z_step_size": 3.0,
        "instrument_sn": "SYNTH0001",
        "instrument_sw_version": "synthetic",
        "analysis_sw_version": profile.analysis_sw_version,
        "images": {"morphology_filepath": "morphology.ome.tif", "morphology_focus_filepath": focus_path},
        "xenium_explorer_files": {"cells_zarr_filepath": XeniumFile.CELLS_ZARR.value},
    }
    if profile.image_layout == "v1":
        spec["images"]["morphology_mip_filepath"] = XeniumFile.MORPHOLOGY_MIP_V1.value
    if profile.major >= 3:
        spec.update(
            major_version=5,
            minor_version=0,
            patch_version=0,
            chemistry_version="v2",
            segmentation_stain="Xenium Multi-Tissue Stain",
        )
    return spec


def write_experiment(root: Path, spec: dict) -> None:
    (root / XeniumFile.EXPERIMENT).write_text(json.dumps(spec, indent=2))


def write_analysis(root: Path, ids: np.ndarray, counts_genes: np.ndarray, n_classes: int, seed: int) -> None:
    """The instrument's own secondary analysis: graph-based-like clusters, k-means and PCA, as CSVs."""
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.decomposition import PCA

    lib = counts_genes.sum(axis=1, keepdims=True)
    x = np.log1p(counts_genes / np.maximum(lib, 1) * 1e2)
    pcs = PCA(n_components=min(10, x.shape[1] - 1), random_state=seed).fit_transform(x)
    base = root / XeniumFile.ANALYSIS_DIR
    barcodes = ids.astype("U")
    for name, k in [
        ("gene_expression_graphclust", n_classes),
        *[(f"gene_expression_kmeans_{k}_clusters", k) for k in range(2, n_classes + 2)],
    ]:
        labels = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3).fit_predict(pcs) + 1
        out = base / "clustering" / name
        out.mkdir(parents=True)
        pd.DataFrame({"Barcode": barcodes, "Cluster": labels}).to_csv(out / CLUSTERS_CSV, index=False)
    out = base / "pca" / "gene_expression_10_components"
    out.mkdir(parents=True)
    frame = pd.DataFrame(pcs, columns=[f"PC-{i + 1}" for i in range(pcs.shape[1])])
    frame.insert(0, "Barcode", barcodes)
    frame.to_csv(out / PROJECTION_CSV, index=False)


class TranscriptWriter:
    """Streams transcripts.parquet (and .csv.gz) in chunks: 10^7 rows never sit in memory at once."""

    def __init__(self, root: Path, features: Features, profile: XoaProfile, csv: bool) -> None:
        self.features = features
        self.profile = profile
        self.schema = self._schema()
        self.parquet = pq.ParquetWriter(
            root / XeniumFile.TRANSCRIPTS_PARQUET, self.schema, compression=PARQUET_COMPRESSION
        )
        self.csv = None
        if csv and profile.csv_transcripts:
            self._csv_stream = pa.CompressedOutputStream(str(root / XeniumFile.TRANSCRIPTS_CSV), "gzip")
            self.csv = pacsv.CSVWriter(self._csv_stream, self._csv_schema())
        self.rows = 0

    def _schema(self) -> pa.Schema:
        p = self.profile
        cell_id = pa.int32() if not p.string_ids else (pa.binary() if p.binary_parquet_ids else pa.string())
        fields = [
            ("transcript_id", pa.uint64()),
            (Col.CELL_ID, cell_id),
            ("overlaps_nucleus", pa.uint8()),
            (Col.FEATURE_NAME, pa.binary() if p.major < 2 else pa.string()),
            (Col.X_LOCATION, pa.float32()),
            (Col.Y_LOCATION, pa.float32()),
            (Col.Z_LOCATION, pa.float32()),
            (Col.QV, pa.float32()),
        ]
        if p.transcript_fov:
            fields += [("fov_name", pa.string()), ("nucleus_distance", pa.float32())]
        if p.transcript_codewords:
            fields += [("codeword_index", pa.int32()), ("codeword_category", pa.string()), ("is_gene", pa.bool_())]
        return pa.schema([(str(n), t) for n, t in fields])

    def _csv_schema(self) -> pa.Schema:
        return pa.schema([pa.field(f.name, pa.string() if pa.types.is_binary(f.type) else f.type) for f in self.schema])

    def write(
        self,
        cell_id: np.ndarray,
        feature: np.ndarray,
        xyz: np.ndarray,
        qv: np.ndarray,
        in_nucleus: np.ndarray,
        nucleus_distance: np.ndarray,
        fov: np.ndarray,
    ) -> None:
        """One chunk; ``cell_id`` holds ids as written (int or str), None for unassigned transcripts."""
        p = self.profile
        n = len(feature)
        tid = np.uint64(2**48) + np.uint64(self.rows) * np.uint64(3) + np.arange(n, dtype=np.uint64) * np.uint64(3)
        if p.string_ids:
            ids = np.where(pd.isna(cell_id), UNASSIGNED_STR, cell_id).astype("U")
            id_arr = (
                pa.array(np.char.encode(ids, "ascii").tolist(), pa.binary())
                if p.binary_parquet_ids
                else pa.array(ids.tolist(), pa.string())
            )
        else:
            id_arr = pa.array(np.where(pd.isna(cell_id), UNASSIGNED_INT, cell_id).astype(np.int32))
        names = self.features.names[feature]
        name_arr = (
            pa.array(np.char.encode(names.astype("U"), "ascii").tolist(), pa.binary())
            if p.major < 2
            else pa.array(names.tolist(), pa.string())
        )
        cols = [
            pa.array(tid),
            id_arr,
            pa.array(in_nucleus.astype(np.uint8)),
            name_arr,
            pa.array(xyz[:, 0].astype(np.float32)),
            pa.array(xyz[:, 1].astype(np.float32)),
            pa.array(xyz[:, 2].astype(np.float32)),
            pa.array(qv.astype(np.float32)),
        ]
        if p.transcript_fov:
            cols += [pa.array(fov.tolist(), pa.string()), pa.array(nucleus_distance.astype(np.float32))]
        if p.transcript_codewords:
            cols += [
                pa.array(feature.astype(np.int32)),
                pa.array(self.features.category[feature].tolist(), pa.string()),
                pa.array(self.features.types[feature] == FeatureType.GENE.value),
            ]
        batch = pa.record_batch(cols, schema=self.schema)
        self.parquet.write_batch(batch)
        if self.csv is not None:
            self.csv.write(batch.cast(self._csv_schema()))
        self.rows += n

    def close(self) -> None:
        self.parquet.close()
        if self.csv is not None:
            self.csv.close()
            self._csv_stream.close()
