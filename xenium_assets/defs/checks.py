"""Asset checks that guard the chain: QC pass rate, usable reference classes, shards agreeing with their index."""

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, asset_check

from xenium_assets.defs.label_reference import label_reference
from xenium_assets.defs.partitions import sample_partitions
from xenium_assets.defs.patch_shards import patch_shards
from xenium_assets.defs.qc_adata import qc_adata
from xenium_assets.labels.table import UNASSIGNED
from xenium_assets.patches.shards import verify_tile

QC_PASS_FLOOR = 0.5


@asset_check(
    asset=qc_adata,
    partitions_def=sample_partitions,
    required_resource_keys={"project"},
    description=f"At least {QC_PASS_FLOOR:.0%} of the sample's cells pass QC.",
)
def qc_pass_fraction(context: AssetCheckExecutionContext) -> AssetCheckResult:
    summary = context.resources.project.paths.qc_adata(context.partition_key).read_summary()
    fraction = summary["n_cells_out"] / max(summary["n_cells_in"], 1)
    return AssetCheckResult(
        passed=fraction >= QC_PASS_FLOOR,
        severity=AssetCheckSeverity.WARN,
        metadata={"pass_fraction": fraction, "floor": QC_PASS_FLOOR},
    )


@asset_check(
    asset=label_reference,
    required_resource_keys={"project"},
    description="The latest label reference has at least two classes that are not rare (enough sketch cells, as "
    "configured when it was built).",
)
def label_classes_above_minimum(context: AssetCheckExecutionContext) -> AssetCheckResult:
    from xenium_assets.labels.store import load_reference

    reference = load_reference(context.resources.project.paths)
    sizes = reference.info["class_cells"]
    usable = {c: n for c, n in sizes.items() if c not in reference.rare_classes and c != UNASSIGNED}
    return AssetCheckResult(
        passed=len(usable) >= 2,
        metadata={
            "label_version": reference.version,
            "usable_classes": len(usable),
            "min_class_cells": reference.params.min_class_cells,
            "smallest_usable_class": min(usable.values(), default=0),
            "rare_classes": ", ".join(reference.rare_classes) or "none",
        },
    )


@asset_check(
    asset=patch_shards,
    required_resource_keys={"project"},
    description="Every tile's shards open as tar files and hold exactly the samples its index lists.",
)
def shards_match_index(context: AssetCheckExecutionContext) -> AssetCheckResult:
    problems, tiles, listed = [], 0, 0
    for index_path in context.resources.project.paths.all_shard_indexes():
        tiles += 1
        n, tile_problems = verify_tile(index_path.parent)
        listed += n
        problems += tile_problems
    return AssetCheckResult(
        passed=not problems,
        metadata={"tiles": tiles, "indexed_samples": listed, "problems": "\n".join(problems[:20]) or "none"},
    )
