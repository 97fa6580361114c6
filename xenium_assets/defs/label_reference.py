"""``label_reference``: the classes, built deliberately from a bounded sketch of chosen samples, and versioned."""

from dataclasses import asdict
from typing import TYPE_CHECKING

from dagster import (
    AssetExecutionContext,
    Config,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from xenium_assets.defs.automation import built_when_missing
from xenium_assets.defs.metadata import bullet_list, frame_table, image
from xenium_assets.defs.partitions import SAMPLES
from xenium_assets.defs.qc_adata import qc_adata
from xenium_assets.defs.resources import ProjectResource
from xenium_assets.labels.options import Method, MethodOptions, ReferenceParams
from xenium_assets.labels.table import UNASSIGNED
from xenium_assets.progress import LogProgress

if TYPE_CHECKING:
    from xenium_assets.labels.reference import BuiltReference


_METHOD, _PARAMS = MethodOptions(), ReferenceParams()  # the library's defaults, the config's too


class ReferenceConfig(Config):
    """Which samples the classes come from, how many of their cells, and the method that names them."""

    samples: list[str] | None = None
    """Samples to build from (default: every sample with a qc_adata when it is built)."""
    max_cells: int = _PARAMS.max_cells
    """Cells drawn from those samples, at most (each sample an equal share; rare populations kept)."""
    method: Method = _METHOD.method
    resolution: float = _METHOD.resolution
    """leiden: higher gives more, smaller clusters."""
    markers_file: str | None = None
    """markers: YAML mapping class -> marker genes."""
    margin: float = _METHOD.margin
    """markers: how much the best class score must beat the runner-up."""
    reference_file: str | None = None
    """reference: an annotated .h5ad (log-normalised or raw counts) to transfer labels from with ingest."""
    reference_label_key: str = _METHOD.reference_label_key
    celltypist_model: str | None = None
    """reference: a local CellTypist model file, used instead of reference_file."""
    integrate: bool = _PARAMS.integrate
    """Integrate sample-level shifts away (Harmony; each placed sample's own shift removed)."""
    min_class_cells: int = _PARAMS.min_class_cells
    """Classes with fewer sketch cells are rare: their cells are excluded from training."""
    seed: int = 0


def _chosen(context: AssetExecutionContext, config: ReferenceConfig, project: ProjectResource) -> list[str]:
    """The samples to build from: the configured ones (each must have a qc_adata) or every one that has it."""
    registered = context.instance.get_dynamic_partitions(SAMPLES)
    has_qc = [k for k in registered if project.paths.qc_adata(k).adata.exists()]
    if config.samples is None:
        if not has_qc:
            raise Failure("no sample has a qc_adata: materialize qc_adata first", allow_retries=False)
        left_out = sorted(set(registered) - set(has_qc))
        if left_out:
            context.log.warning(f"no qc_adata yet for {', '.join(left_out)}: the reference is built without them")
        return has_qc
    lacking = [k for k in config.samples if k not in has_qc]
    if lacking:
        raise Failure(
            f"samples {', '.join(lacking)} have no qc_adata (or are not registered): materialize qc_adata for them, "
            "or leave them out of samples",
            allow_retries=False,
        )
    return list(config.samples)


def _graphclust_files(project: ProjectResource, samples: list[str]) -> dict[str, str | None]:
    """Each sample's instrument clusters (analysis/ CSV), None where the bundle has none."""
    files = {k: project.manifest(k).path("graphclust") for k in samples}
    return {k: str(path) if path else None for k, path in files.items()}


def _metadata(built: "BuiltReference", config: ReferenceConfig, samples: list[str]) -> dict:
    """What the UI shows of a reference: its classes per sample, markers, integration and the UMAP."""
    from xenium_assets.labels.plots import umap_figure

    reference, cells = built.reference, built.cells_table()
    per_sample = cells.pivot_table(index="label", columns="sample", values="cell_id", aggfunc="count", fill_value=0)
    top = built.labelling.markers.sort_values("rank").groupby("label")["gene"].apply(lambda g: ", ".join(g.head(5)))
    usable = [c for c in reference.classes if c not in reference.rare_classes and c != UNASSIGNED]
    if not config.integrate:
        integration = "off"
    elif len(samples) > 1:
        integration = f"Harmony across {len(samples)} samples"
    else:
        integration = "one sample: each later sample's own shift is removed against it"
    mixing = reference.info["same_sample_neighbours"]
    return {
        "label_version": reference.version,
        "method": config.method,
        "samples": ", ".join(samples),
        "n_cells_in_samples": sum(reference.info["sample_cells"].values()),
        "n_cells": len(cells),
        "n_classes": len(usable),
        "rare_classes": ", ".join(reference.rare_classes) or "none",
        "integration": integration,
        **{f"same_sample_neighbours_{k}": round(v, 3) for k, v in mixing.items()},
        "class_cells_per_sample": frame_table(per_sample, "label"),
        "markers": frame_table(top.to_frame("top marker genes"), "label") if len(top) else "none",
        "notes": bullet_list(built.labelling.notes),
        "umap": image(umap_figure(built.cells, built.labelling.label, seed=config.seed), "UMAP by label and sample"),
    }


@asset(
    automation_condition=built_when_missing(),
    deps=[qc_adata],
    group_name="labels",
    kinds={"scanpy"},
    description="The label classes, built from a bounded sketch of chosen samples (every sample present by default): "
    "Harmony across samples, then leiden, marker sets or an annotated reference, named by marker genes. Keeps what "
    "places any sample's cells in it. Built when first missing and when a user asks, never because a sample landed.",
)
def label_reference(
    context: AssetExecutionContext, config: ReferenceConfig, project: ProjectResource
) -> MaterializeResult:
    # scanpy, harmonypy and the methods are imported here, not at module level: loading the code location (every
    # run's every step process does) stays fast.
    from xenium_assets.labels.reference import build_reference
    from xenium_assets.labels.store import mark_latest
    from xenium_assets.labels.table import LabelError, label_version

    samples = _chosen(context, config, project)
    paths = {k: project.paths.qc_adata(k).adata for k in samples}
    options = MethodOptions(
        method=config.method,
        resolution=config.resolution,
        markers_file=config.markers_file,
        margin=config.margin,
        reference_file=config.reference_file,
        reference_label_key=config.reference_label_key,
        celltypist_model=config.celltypist_model,
        graphclust=_graphclust_files(project, samples) if config.method == "xenium_graphclust" else {},
        seed=config.seed,
    )
    params = ReferenceParams(
        max_cells=config.max_cells, integrate=config.integrate, min_class_cells=config.min_class_cells, seed=config.seed
    )
    fingerprints = {k: project.paths.qc_adata(k).read_summary()["fingerprint"] for k in samples}
    version = label_version(
        config.method,
        {**options.params(), **asdict(params)},
        {"qc_adata": fingerprints, "files": options.fingerprints()},
    )
    context.log.info(f"building reference {version} from {len(samples)} sample(s) with {config.method}")
    try:
        built = build_reference(paths, options, params, version, progress=LogProgress(context.log.info))
    except LabelError as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
    folder = project.paths.reference_dir(version)
    built.reference.save(folder, built.cells_table(), built.labelling.markers)
    mark_latest(project.paths, version)
    for note in built.labelling.notes:
        context.log.warning(note) if "not in the panel" in note or "weak" in note else context.log.info(note)
    context.log.info("drawing the reference's UMAP")
    return MaterializeResult(
        metadata={"path": MetadataValue.path(str(folder)), **_metadata(built, config, samples)},
        data_version=DataVersion(version),
    )
