"""Resources: where the project's data lives, configured once for the whole code location."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource, Failure

from xenium_assets.bundle.manifest import Manifest, read_manifest
from xenium_assets.layout import IMAGE_LANDING, ProjectPaths
from xenium_assets.registry import SampleEntry, SampleRegistry


class ProjectResource(ConfigurableResource):
    """The project's data folder (data/ by default; $XENIUM_ASSETS_DATA elsewhere)."""

    data_dir: str
    landing_dir: str | None = None
    """Folder the landing sensor watches (default: <data_dir>/landing)."""

    @property
    def paths(self) -> ProjectPaths:
        return ProjectPaths(Path(self.data_dir).resolve())

    @property
    def landing(self) -> Path:
        return Path(self.landing_dir).resolve() if self.landing_dir else self.paths.landing_dir

    @property
    def image_landing(self) -> Path:
        """Where DAPI-only images are dropped for prediction: a folder inside the landing directory."""
        return self.landing / IMAGE_LANDING

    @property
    def images(self):  # -> ImageRegistry (imported when used: it reads images, which loading definitions does not)
        from xenium_assets.images.entries import ImageRegistry

        return ImageRegistry(self.paths)

    @property
    def registry(self) -> SampleRegistry:
        return SampleRegistry(self.paths.samples_dir)

    def sample(self, key: str) -> SampleEntry:
        return self.registry.get(key)

    def manifest(self, key: str) -> Manifest:
        """The sample's validated bundle manifest; a Failure that says what to materialize if it has none."""
        files = self.paths.raw_bundle(key)
        if not files.manifest.exists():
            raise Failure(
                f"sample {key!r} has no raw_bundle manifest: materialize raw_bundle for it first", allow_retries=False
            )
        return read_manifest(files.manifest)
