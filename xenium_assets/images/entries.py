"""DAPI-only images added to the project (``xenium-assets add-image`` or the image landing folder): one JSON record
per image key, with what opening it needs (its path, and a pixel size or channel its metadata lacks)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from xenium_assets.atomic import write_json
from xenium_assets.images.source import ImageSource, open_image
from xenium_assets.layout import IMAGE_ENTRY, ProjectPaths
from xenium_assets.registry import sanitize_key

IMAGE_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class ImageEntry:
    key: str
    path: str
    pixel_size_um: float | None = None
    channel: str | int | None = None
    added_at: str = ""

    def open(self) -> ImageSource:
        """The image, read as ``add-image`` validated it."""
        return open_image(self.path, pixel_size_um=self.pixel_size_um, channel=self.channel)


def image_key(path: Path) -> str:
    """A partition key from a file name (``slide 3.ome.tif`` -> ``slide_3``) or a bundle folder's name."""
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", *IMAGE_SUFFIXES):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return sanitize_key(name)


class ImageRegistry:
    """Added images, one JSON file per image (no shared file to lock)."""

    def __init__(self, paths: ProjectPaths) -> None:
        self.paths = paths

    def entries(self) -> list[ImageEntry]:
        return [self._load(p) for p in sorted(self.paths.images_dir.glob(f"*/{IMAGE_ENTRY}"))]

    def get(self, key: str) -> ImageEntry:
        path = self.paths.image_entry(key)
        if not path.exists():
            raise KeyError(f"image {key!r} is not added: run `xenium-assets add-image IMAGE --key {key}`")
        return self._load(path)

    def find(self, path: str | Path) -> ImageEntry | None:
        target = str(Path(path).resolve())
        return next((e for e in self.entries() if e.path == target), None)

    def add(
        self,
        path: str | Path,
        key: str | None = None,
        *,
        pixel_size_um: float | None = None,
        channel: str | int | None = None,
    ) -> tuple[ImageEntry, bool]:
        """Open the image (an ImageError, one line, when it cannot be predicted on), then record it; returns
        (entry, created). The same file again is a no-op; another file under a taken key is refused."""
        path = Path(path).resolve()
        open_image(path, pixel_size_um=pixel_size_um, channel=channel)
        existing = self.find(path)
        if existing is not None:
            if key is not None and key != existing.key:
                raise ValueError(f"{path} is already added as image {existing.key!r}")
            return existing, False
        if key is not None and sanitize_key(key) != key:
            raise ValueError(f"image key {key!r} is not a valid partition key; use {sanitize_key(key)!r}")
        key = key or image_key(path)
        record = self.paths.image_entry(key)
        if record.exists():
            raise ValueError(f"image {key!r} is already added for {self._load(record).path}; choose another --key")
        entry = ImageEntry(key, str(path), pixel_size_um, channel, datetime.now(UTC).isoformat(timespec="seconds"))
        write_json(record, asdict(entry))
        return entry, True

    @staticmethod
    def _load(path: Path) -> ImageEntry:
        return ImageEntry(**json.loads(path.read_text()))
