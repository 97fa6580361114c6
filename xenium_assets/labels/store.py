"""Where a project keeps its label references and per-sample labels, and how training reads them back."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from xenium_assets.atomic import atomic_file, write_json
from xenium_assets.labels.table import LABEL_COLUMNS, LabelError
from xenium_assets.layout import ProjectPaths

if TYPE_CHECKING:
    from xenium_assets.labels.reference import LabelReference


def latest_version(paths: ProjectPaths) -> str | None:
    """The newest reference's version, or None if no reference was built."""
    if not paths.latest_reference.exists():
        return None
    return json.loads(paths.latest_reference.read_text())["version"]


def resolve_version(paths: ProjectPaths, version: str | None) -> str:
    """``version``, or the latest; a LabelError that says what to materialize when there is none."""
    version = version or latest_version(paths)
    if version is None:
        legacy = paths.legacy_labels_table.exists()
        raise LabelError(
            "no label reference yet: materialize label_reference (or run `xenium-assets reference`), then "
            "cell_labels for each sample"
            + (f" ({paths.legacy_labels_table} from an earlier version is no longer read)" if legacy else "")
        )
    if not paths.reference_dir(version).is_dir():
        known = (
            sorted(p.name for p in paths.references_dir.iterdir() if p.is_dir())
            if paths.references_dir.is_dir()
            else []
        )
        raise LabelError(
            f"no label reference {version!r} in {paths.references_dir} (built: {', '.join(known) or 'none'})"
        )
    return version


def load_reference(paths: ProjectPaths, version: str | None = None) -> LabelReference:
    # Imported here: the viewer and the retraining schedule read only versions, not references (anndata, sklearn).
    from xenium_assets.labels.reference import LabelReference

    return LabelReference.load(paths.reference_dir(resolve_version(paths, version)))


def mark_latest(paths: ProjectPaths, version: str) -> None:
    write_json(
        paths.latest_reference, {"version": version, "built_at": datetime.now(UTC).isoformat(timespec="seconds")}
    )


def write_labels(paths: ProjectPaths, table: pd.DataFrame) -> None:
    """One sample's labels in one reference version, atomically."""
    sample, version = str(table["sample"].iloc[0]), str(table["label_version"].iloc[0])
    with atomic_file(paths.sample_labels(sample, version)) as tmp:
        pq.write_table(pa.Table.from_pandas(table[list(LABEL_COLUMNS)], preserve_index=False), tmp)


def read_labels(paths: ProjectPaths, samples: list[str], version: str) -> tuple[pd.DataFrame, list[str]]:
    """The labels of ``samples`` in reference ``version``, and the samples that have none in it yet."""
    frames, missing = [], []
    for sample in samples:
        path = paths.sample_labels(sample, version)
        if path.exists():
            frames.append(pq.read_table(path).to_pandas())
        else:
            missing.append(sample)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(LABEL_COLUMNS))
    return table, missing


def usable_labels(table: pd.DataFrame) -> pd.DataFrame:
    """key ('sample/cell_id', as in the shard index), label and confidence of the cells that are not excluded."""
    usable = table[table["excluded_reason"] == ""]
    return pd.DataFrame(
        {
            "key": usable["sample"].astype(str) + "/" + usable["cell_id"].astype(str),
            "label": usable["label"].to_numpy(),
            "confidence": usable["confidence"].to_numpy(),
        }
    )
