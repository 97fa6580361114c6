"""Asset checks that guard the chain: QC pass rate, usable label classes, shards agreeing with their index."""

import json
import tarfile
from collections import Counter

import pandas as pd
from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, asset_check

from xenium_assets.defs.cell_labels import LabelConfig, cell_labels
from xenium_assets.defs.partitions import sample_partitions
from xenium_assets.defs.patch_shards import patch_shards
from xenium_assets.defs.qc_adata import SUMMARY, qc_adata
from xenium_assets.patches.shards import INDEX

QC_PASS_FLOOR = 0.5
MIN_CLASS_CELLS = LabelConfig().min_class_cells


@asset_check(
    asset=qc_adata,
    partitions_def=sample_partitions,
    required_resource_keys={"project"},
    description=f"At least {QC_PASS_FLOOR:.0%} of the sample's cells pass QC.",
)
def qc_pass_fraction(context: AssetCheckExecutionContext) -> AssetCheckResult:
    summary = json.loads(
        (context.resources.project.paths.asset_dir(context.partition_key, "qc_adata") / SUMMARY).read_text()
    )
    fraction = summary["n_cells_out"] / max(summary["n_cells_in"], 1)
    return AssetCheckResult(
        passed=fraction >= QC_PASS_FLOOR,
        severity=AssetCheckSeverity.WARN,
        metadata={"pass_fraction": fraction, "floor": QC_PASS_FLOOR},
    )


@asset_check(
    asset=cell_labels,
    required_resource_keys={"project"},
    description=f"At least two label classes, each with {MIN_CLASS_CELLS}+ usable cells.",
)
def label_classes_above_minimum(context: AssetCheckExecutionContext) -> AssetCheckResult:
    table = pd.read_parquet(context.resources.project.paths.labels_table)
    counts = table.loc[table["excluded_reason"] == "", "label"].value_counts()
    small = counts[counts < MIN_CLASS_CELLS]
    return AssetCheckResult(
        passed=len(counts) >= 2 and small.empty,
        metadata={
            "usable_classes": len(counts),
            "smallest_class": int(counts.min()) if len(counts) else 0,
            "classes_below_minimum": ", ".join(small.index) or "none",
        },
    )


@asset_check(
    asset=patch_shards,
    required_resource_keys={"project"},
    description="Every tile's shards open as tar files and hold exactly the samples its index lists.",
)
def shards_match_index(context: AssetCheckExecutionContext) -> AssetCheckResult:
    samples_dir = context.resources.project.paths.samples_dir
    problems, tiles, listed = [], 0, 0
    for index_path in sorted(samples_dir.glob(f"*/patch_shards/*/{INDEX}")):
        tiles += 1
        index = pd.read_parquet(index_path, columns=["key", "shard"])
        listed += len(index)
        expected = Counter(index["shard"])
        for shard, n in expected.items():
            try:
                with tarfile.open(index_path.parent / shard) as tar:
                    found = sum(1 for m in tar if m.name.endswith(".json"))
            except (OSError, tarfile.TarError) as exc:
                problems.append(f"{index_path.parent / shard}: unreadable ({exc})")
                continue
            if found != n:
                problems.append(f"{index_path.parent / shard}: {found} samples, index lists {n}")
    return AssetCheckResult(
        passed=not problems,
        metadata={"tiles": tiles, "indexed_samples": listed, "problems": "\n".join(problems[:20]) or "none"},
    )
