"""Resources: where the project's data lives, configured once for the whole code location."""

from __future__ import annotations

from dagster import ConfigurableResource

from xenium_assets.paths import ProjectPaths
from xenium_assets.registry import SampleEntry, SampleRegistry


class ProjectResource(ConfigurableResource):
    """The project's data folder (data/ by default; $XENIUM_ASSETS_DATA elsewhere)."""

    data_dir: str

    @property
    def paths(self) -> ProjectPaths:
        from pathlib import Path

        return ProjectPaths(Path(self.data_dir).resolve())

    @property
    def registry(self) -> SampleRegistry:
        return SampleRegistry(self.paths.samples_dir)

    def sample(self, key: str) -> SampleEntry:
        return self.registry.get(key)
