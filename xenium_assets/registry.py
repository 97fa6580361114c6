"""Sample registry: which bundle folder each sample partition key stands for.

Dagster's dynamic partitions hold only keys, so the mapping key -> bundle (and per-sample overrides
such as a pixel size the bundle does not record) lives in ``data/samples/<key>/sample.json``.
Keys are derived from the bundle's folder name (unique per run, unlike region names such as
'Region_1'), sanitised for Dagster, and made unique deterministically: a clash with another bundle
appends a short hash of the bundle's path. A bundle is recorded with its identity (experiment.xenium's
run and region names, and a fingerprint of its files' names and sizes), so the same run copied in
again under another folder name is recognised and refused rather than becoming a second sample.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from xenium_assets.atomic import write_json
from xenium_assets.formats import XeniumFile
from xenium_assets.landing import folder_fingerprint
from xenium_assets.layout import SAMPLE_ENTRY

_INVALID = re.compile(r"[^A-Za-z0-9_.-]+")


def sanitize_key(text: str) -> str:
    """A valid Dagster partition key (letters, digits, _ . -), never empty and never containing '...'."""
    key = _INVALID.sub("_", text.strip()).strip("._-")
    key = re.sub(r"\.{2,}", ".", key)
    return key[:64] or "sample"


class AlreadyRegistered(ValueError):
    """The bundle is a copy of one registered under ``key``."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def bundle_identity(bundle_dir: Path) -> dict[str, str | None] | None:
    """What makes two folders the same run: experiment.xenium's run and region names, and the files' fingerprint
    (None for a folder without files, which identifies nothing)."""
    if next((p for p in Path(bundle_dir).rglob("*") if p.is_file()), None) is None:
        return None
    spec: dict = {}
    # No or an unreadable experiment.xenium: the files' fingerprint alone (validation reports the file).
    with contextlib.suppress(OSError, ValueError):
        spec = json.loads((Path(bundle_dir) / XeniumFile.EXPERIMENT).read_text())
    spec = spec if isinstance(spec, dict) else {}
    return {
        "run_name": spec.get("run_name"),
        "region_name": spec.get("region_name"),
        "fingerprint": folder_fingerprint(Path(bundle_dir)),
    }


@dataclass(frozen=True)
class SampleEntry:
    key: str
    bundle_dir: str
    pixel_size_um: float | None = None
    image_origin_um: tuple[float, float] | None = None
    added_at: str = ""
    identity: dict | None = None
    """bundle_identity() when it was registered (None for samples registered before it was kept)."""


class SampleRegistry:
    """Registered samples, one JSON file per sample (no shared file to lock)."""

    def __init__(self, samples_dir: Path) -> None:
        self.samples_dir = Path(samples_dir)

    def entries(self) -> list[SampleEntry]:
        return [self._load(p) for p in sorted(self.samples_dir.glob(f"*/{SAMPLE_ENTRY}"))]

    def get(self, key: str) -> SampleEntry:
        path = self.samples_dir / key / SAMPLE_ENTRY
        if not path.exists():
            raise KeyError(f"sample {key!r} is not registered: run `xenium-assets add BUNDLE_DIR --sample {key}`")
        return self._load(path)

    def find_bundle(self, bundle_dir: str | Path) -> SampleEntry | None:
        target = str(Path(bundle_dir).resolve())
        return next((e for e in self.entries() if e.bundle_dir == target), None)

    def copy_of(self, bundle_dir: str | Path) -> SampleEntry | None:
        """The sample that ``bundle_dir`` is a copy of: another folder registered with the same identity (None when
        the folder itself is registered, or is no copy). Stat only: callers skip a copy before validating it."""
        if self.find_bundle(bundle_dir) is not None:
            return None
        return self.find_identity(bundle_identity(Path(bundle_dir).resolve()))

    def find_identity(self, identity: dict | None) -> SampleEntry | None:
        """The sample registered for the same run (same experiment, region and files), if any."""
        if identity is None:
            return None
        for entry in self.entries():
            known = entry.identity
            if known is None and Path(entry.bundle_dir).is_dir():
                known = bundle_identity(Path(entry.bundle_dir))
            if known == identity:
                return entry
        return None

    def derive_key(self, bundle_dir: Path, preferred: str) -> str:
        """``preferred`` sanitised; if another bundle holds it, suffixed with a hash of this bundle's path."""
        key = sanitize_key(preferred)
        path = self.samples_dir / key / SAMPLE_ENTRY
        if path.exists() and self._load(path).bundle_dir != str(bundle_dir):
            key = f"{key}-{hashlib.sha1(str(bundle_dir).encode()).hexdigest()[:6]}"
        return key

    def register(
        self,
        bundle_dir: str | Path,
        key: str | None = None,
        *,
        pixel_size_um: float | None = None,
        image_origin_um: tuple[float, float] | None = None,
    ) -> tuple[SampleEntry, bool]:
        """Register a bundle; returns (entry, created). The same folder again is a no-op; a copy of a registered run
        in another folder raises AlreadyRegistered."""
        bundle_dir = Path(bundle_dir).resolve()
        existing = self.find_bundle(bundle_dir)
        if existing is not None:
            if key is not None and key != existing.key:
                raise ValueError(f"{bundle_dir} is already registered as sample {existing.key!r}")
            return existing, False
        identity = bundle_identity(bundle_dir)
        twin = self.find_identity(identity)
        if twin is not None:
            raise AlreadyRegistered(
                twin.key,
                f"{bundle_dir} is already registered as {twin.key} (the same experiment, region and files as "
                f"{twin.bundle_dir}); nothing to add",
            )
        if key is not None:
            clean = sanitize_key(key)
            if clean != key:
                raise ValueError(f"sample key {key!r} is not a valid partition key; use {clean!r}")
            path = self.samples_dir / key / SAMPLE_ENTRY
            if path.exists():
                raise ValueError(
                    f"sample {key!r} is already registered for {self._load(path).bundle_dir}; choose another --sample"
                )
        else:
            key = self.derive_key(bundle_dir, bundle_dir.name)
        entry = SampleEntry(
            key=key,
            bundle_dir=str(bundle_dir),
            pixel_size_um=pixel_size_um,
            image_origin_um=tuple(image_origin_um) if image_origin_um else None,
            added_at=datetime.now(UTC).isoformat(timespec="seconds"),
            identity=identity,
        )
        write_json(self.samples_dir / key / SAMPLE_ENTRY, asdict(entry))
        return entry, True

    @staticmethod
    def _load(path: Path) -> SampleEntry:
        data = json.loads(path.read_text())
        if data.get("image_origin_um") is not None:
            data["image_origin_um"] = tuple(data["image_origin_um"])
        return SampleEntry(**data)
