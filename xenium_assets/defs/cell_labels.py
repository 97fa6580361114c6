"""``cell_labels``: one set of expression labels for all samples, with confidence and exclusions."""

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from dagster import (
    AssetExecutionContext,
    Config,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from xenium_assets.atomic import atomic_file
from xenium_assets.bundle.manifest import read_manifest
from xenium_assets.defs.automation import follows_inputs
from xenium_assets.defs.metadata import bullet_list, counts_table, frame_table, image, images
from xenium_assets.defs.partitions import SAMPLES
from xenium_assets.defs.qc_adata import load_qc_adata, qc_adata, read_qc_summary
from xenium_assets.defs.resources import ProjectResource

if TYPE_CHECKING:
    from xenium_assets.labels.joint import Labelling

MARKERS = "markers.csv"
OVERVIEWS = "overviews"


class LabelConfig(Config):
    """How cells get their labels. Only the fields of the chosen method matter."""

    method: Literal["leiden", "markers", "reference", "xenium_graphclust"] = "leiden"
    resolution: float = 0.5
    """leiden: higher gives more, smaller clusters."""
    markers_file: str | None = None
    """markers: YAML mapping class -> marker genes."""
    margin: float = 0.1
    """markers: how much the best class score must beat the runner-up."""
    reference_file: str | None = None
    """reference: an annotated .h5ad (log-normalised or raw counts) to transfer labels from with ingest."""
    reference_label_key: str = "cell_type"
    celltypist_model: str | None = None
    """reference: a local CellTypist model file, used instead of reference_file."""
    min_confidence: float = 0.5
    min_class_cells: int = 20
    seed: int = 0


def _label(joint, config: LabelConfig, project: ProjectResource, samples: list[str]) -> "Labelling":
    """Dispatch to the configured method (each lives in its own library module)."""
    from xenium_assets.labels.joint import LabelError

    if config.method == "leiden":
        from xenium_assets.labels.leiden import label_leiden

        return label_leiden(joint, resolution=config.resolution, seed=config.seed)
    if config.method == "markers":
        from xenium_assets.labels.markers import label_markers, read_marker_file

        if not config.markers_file:
            raise LabelError("method 'markers' needs markers_file (YAML: class -> genes)")
        return label_markers(joint, read_marker_file(config.markers_file), margin=config.margin, seed=config.seed)
    if config.method == "reference":
        from xenium_assets.labels.reference import label_celltypist, label_reference

        if config.celltypist_model:
            return label_celltypist(joint, config.celltypist_model, seed=config.seed)
        if not config.reference_file:
            raise LabelError("method 'reference' needs reference_file (.h5ad) or celltypist_model")
        return label_reference(joint, config.reference_file, config.reference_label_key, seed=config.seed)
    from xenium_assets.labels.graphclust import label_graphclust

    clusters = {s: read_manifest(project.paths.asset_dir(s, "raw_bundle")).path("graphclust") for s in samples}
    return label_graphclust(joint, clusters, seed=config.seed)


LABEL_FILES = ("markers_file", "reference_file", "celltypist_model")


def version_inputs(config: LabelConfig, qc_fingerprints: dict[str, str]) -> dict[str, dict[str, str]]:
    """What the label version hashes besides the parameters: each sample's QC'd matrix and the content of
    every file the config names (its path alone would keep the version when the file is edited)."""
    from xenium_assets.labels.joint import file_fingerprint

    paths = {name: getattr(config, name) for name in LABEL_FILES}
    files = {name: file_fingerprint(path) for name, path in paths.items() if path and Path(path).is_file()}
    return {"qc_adata": qc_fingerprints, "files": files}


def _overviews(project: ProjectResource, table, samples: list[str]) -> dict[str, bytes]:
    """Each sample's DAPI with its cells in label colours, written to labels/overviews/<sample>.png."""
    from xenium_assets.labels.overview import overview_png
    from xenium_assets.slide import read_geometry

    pngs = {}
    for sample in samples:
        manifest = read_manifest(project.paths.asset_dir(sample, "raw_bundle"))
        png = overview_png(manifest, read_geometry(manifest, nuclei=False), table[table["sample"] == sample])
        with atomic_file(project.paths.labels_dir / OVERVIEWS / f"{sample}.png") as tmp:
            tmp.write_bytes(png)
        pngs[sample] = png
    return pngs


@asset(
    automation_condition=follows_inputs(),
    deps=[qc_adata],
    group_name="labels",
    kinds={"parquet"},
    description="Expression labels for every QC'd cell of every sample, made jointly so a label means the same in "
    "all samples; each with a confidence and, if excluded, the reason. Versioned by method, parameters and inputs.",
)
def cell_labels(context: AssetExecutionContext, config: LabelConfig, project: ProjectResource) -> MaterializeResult:
    # scanpy and the label methods are imported here, not at module level, so that loading the code location
    # (every run's every step process does) stays fast.
    from xenium_assets.labels.joint import LabelError, class_counts, finalise, joint_matrix, label_version
    from xenium_assets.labels.plots import umap_figure

    keys = context.instance.get_dynamic_partitions(SAMPLES)
    ready = [k for k in keys if (project.paths.asset_dir(k, "qc_adata") / "adata.h5ad").exists()]
    missing = sorted(set(keys) - set(ready))
    if missing:
        context.log.warning(f"no qc_adata yet for {', '.join(missing)}: labelled without them")
    if not ready:
        raise Failure("no sample has a qc_adata: materialize qc_adata first", allow_retries=False)
    context.log.info(f"labelling {len(ready)} sample(s) with {config.method}")
    samples = {k: load_qc_adata(project, k) for k in ready}
    fingerprints = {k: read_qc_summary(project.paths.asset_dir(k, "qc_adata"))["fingerprint"] for k in ready}
    try:
        joint = joint_matrix(samples)
        labelling = _label(joint, config, project, ready)
    except LabelError as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
    for note in labelling.notes:
        context.log.warning(note) if "not in the panel" in note or "weak" in note else context.log.info(note)
    version = label_version(config.method, config.model_dump(), version_inputs(config, fingerprints))
    table = finalise(
        joint, labelling, min_confidence=config.min_confidence, min_class_cells=config.min_class_cells, version=version
    )
    out = project.paths.labels_dir
    with atomic_file(project.paths.labels_table) as tmp:
        pq.write_table(pa.Table.from_pandas(table, preserve_index=False), tmp)
    with atomic_file(out / MARKERS) as tmp:
        labelling.markers.to_csv(tmp, index=False)
    context.log.info("drawing the UMAP and each sample's overview")
    labels = table["label"].to_numpy()
    counts = class_counts(table)
    usable = table[table["excluded_reason"] == ""]
    top = labelling.markers.sort_values("rank").groupby("label")["gene"].apply(lambda g: ", ".join(g.head(5)))
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(project.paths.labels_table)),
            "label_version": version,
            "method": config.method,
            "samples": ", ".join(ready),
            "n_cells": len(table),
            "n_usable_cells": len(usable),
            "n_classes": int(usable["label"].nunique()),
            "class_counts": frame_table(counts, "label"),
            "excluded_by_reason": counts_table(
                table.loc[table["excluded_reason"] != "", "excluded_reason"].value_counts().to_dict()
            ),
            "markers": frame_table(top.to_frame("top marker genes"), "label") if len(top) else "none",
            "notes": bullet_list(
                labelling.notes + ([f"samples without qc_adata: {', '.join(missing)}"] if missing else [])
            ),
            "umap": image(umap_figure(joint, labels, seed=config.seed), "UMAP by label"),
            "overviews": images(_overviews(project, table, ready)),
            "overview_dir": MetadataValue.path(str(out / OVERVIEWS)),
        },
        data_version=DataVersion(version),
    )
