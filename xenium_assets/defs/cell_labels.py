"""``cell_labels``: one sample's cells placed in the label reference, with confidence and exclusions."""

import hashlib
import json

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
from xenium_assets.defs.automation import settled_eager
from xenium_assets.defs.label_reference import label_reference
from xenium_assets.defs.metadata import bullet_list, counts_table, image
from xenium_assets.defs.partitions import sample_partitions
from xenium_assets.defs.qc_adata import qc_adata
from xenium_assets.defs.resources import ProjectResource


class LabelConfig(Config):
    reference_version: str | None = None
    """The label reference to place the cells in (default: the latest)."""
    min_confidence: float = 0.5
    """Cells whose label won fewer of their neighbours' votes are excluded (low_confidence)."""


@asset(
    automation_condition=settled_eager(),
    partitions_def=sample_partitions,
    deps=[qc_adata, label_reference],
    group_name="labels",
    kinds={"parquet"},
    description="The sample's cells placed in the label reference (its own shift removed, then a vote of the nearest "
    "reference cells): a label with a confidence for every QC'd cell, excluded ones with the reason. Adding a "
    "sample labels that sample only.",
)
def cell_labels(context: AssetExecutionContext, config: LabelConfig, project: ProjectResource) -> MaterializeResult:
    # scanpy-side code is imported here, not at module level, so that loading the code location stays fast.
    from xenium_assets.labels.matrix import read_counts
    from xenium_assets.labels.overview import overview_png
    from xenium_assets.labels.reference import label_sample
    from xenium_assets.labels.store import load_reference, write_labels
    from xenium_assets.labels.table import LabelError
    from xenium_assets.slide import read_geometry

    sample = context.partition_key
    paths = project.paths
    adata = paths.qc_adata(sample).adata
    if not adata.exists():
        raise Failure(f"sample {sample!r} has no qc_adata: materialize it first", allow_retries=False)
    try:
        reference = load_reference(paths, config.reference_version)
        context.log.info(f"placing {sample} in reference {reference.version}")
        table, notes = label_sample(reference, read_counts(sample, adata), min_confidence=config.min_confidence)
    except LabelError as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
    for note in notes:
        context.log.warning(note)
    write_labels(paths, table)
    manifest = project.manifest(sample)
    png = overview_png(manifest, read_geometry(manifest, nuclei=False), table, title=f"{sample} ({reference.version})")
    with atomic_file(paths.sample_overview(sample)) as tmp:
        tmp.write_bytes(png)
    usable = table[table["excluded_reason"] == ""]
    fingerprint = paths.qc_adata(sample).read_summary()["fingerprint"]
    identity = json.dumps([reference.version, fingerprint, config.min_confidence])
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(paths.sample_labels(sample, reference.version))),
            "label_version": reference.version,
            "n_cells": len(table),
            "n_usable_cells": len(usable),
            "n_classes": int(usable["label"].nunique()),
            "median_confidence": float(table["confidence"].median()) if len(table) else 0.0,
            "class_counts": counts_table(usable["label"].value_counts().sort_index().to_dict(), "label"),
            "excluded_by_reason": counts_table(
                table.loc[table["excluded_reason"] != "", "excluded_reason"].value_counts().to_dict()
            ),
            "notes": bullet_list(notes),
            "overview": image(png, f"{sample} by label"),
            "overview_path": MetadataValue.path(str(paths.sample_overview(sample))),
        },
        data_version=DataVersion(hashlib.sha1(identity.encode()).hexdigest()[:16]),
    )
