"""What training reads, as one fingerprint: the retraining schedule compares it with the last model's."""

from __future__ import annotations

from xenium_assets.fingerprint import stat_fingerprint
from xenium_assets.labels.store import latest_version
from xenium_assets.layout import ProjectPaths


def training_inputs(paths: ProjectPaths) -> str:
    """Stat-only fingerprint of the latest label reference, every sample's labels in it and every tile's shard
    index. A new sample's labels or shards, or a new reference, change it."""
    version = latest_version(paths) or ""
    labels = paths.all_labels(version) if version else []
    files = [paths.latest_reference, *labels, *paths.all_shard_indexes()]
    return stat_fingerprint(files, paths.data_dir, seed=version)
