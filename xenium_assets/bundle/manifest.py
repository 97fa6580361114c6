"""The manifest: what raw_bundle learned about a bundle, so no downstream asset re-discovers files.

``manifest.json`` holds absolute file paths, the XOA version, pixel size and image origin, where the
DAPI plane is and its pyramid, counts, and problems. ``cell_problems.parquet`` beside it lists every
cell with a problem and why (kind ``invalid``: skip it; kind ``flag``: informational).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow.parquet as pq

from xenium_assets.atomic import atomic_file, write_json
from xenium_assets.bundle.validate import BundleReport
from xenium_assets.layout import RawBundleFiles

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class DapiRef:
    file: str
    ifd: int
    channel_index: int
    channel_name: str
    channels: list[str]
    levels: list[list[int]]
    tile: list[int] | None
    compression: str
    dtype: str


@dataclass(frozen=True)
class Manifest:
    schema: int
    sample: str
    bundle_dir: str
    files: dict[str, str | None]
    matrix_format: str
    image_layout: str
    xoa_version: str
    analysis_sw_version: str | None
    pixel_size_um: float
    pixel_size_source: str
    image_origin_um: list[float]
    dapi: DapiRef
    n_cells: int
    n_valid_cells: int
    n_nucleus_polygons: int
    id_kind: str
    feature_types: dict[str, int]
    invalid_cells: dict[str, int]
    flagged_cells: dict[str, int]
    problems: list[str]
    fingerprint: str
    cell_problems: str

    def path(self, role: str) -> Path | None:
        """Absolute path of a bundle file by role ('cells', 'matrix', 'focus', ...)."""
        rel = self.files.get(role)
        return None if rel is None else Path(self.bundle_dir) / rel

    @property
    def dapi_path(self) -> Path:
        return Path(self.bundle_dir) / self.dapi.file

    @classmethod
    def from_report(cls, report: BundleReport, sample: str, cell_problems: Path) -> Manifest:
        d = report.dapi
        root = report.files.root
        return cls(
            schema=SCHEMA_VERSION,
            sample=sample,
            bundle_dir=str(root),
            files=report.files.relative(),
            matrix_format=report.files.matrix_format,
            image_layout=report.files.image_layout,
            xoa_version=report.version.label,
            analysis_sw_version=report.version.text,
            pixel_size_um=report.pixel_size_um,
            pixel_size_source=report.pixel_size_source,
            image_origin_um=list(report.image_origin_um),
            dapi=DapiRef(
                file=d.file.relative_to(root).as_posix(),
                ifd=d.ifd,
                channel_index=d.channel_index,
                channel_name=d.channel_name,
                channels=d.channels,
                levels=[list(lv) for lv in d.levels],
                tile=list(d.tile) if d.tile else None,
                compression=d.compression,
                dtype=d.dtype,
            ),
            n_cells=report.n_cells,
            n_valid_cells=report.n_valid_cells,
            n_nucleus_polygons=report.n_nucleus_polygons,
            id_kind=report.id_kind,
            feature_types=report.feature_types,
            invalid_cells=report.invalid,
            flagged_cells=report.flags,
            problems=report.problems,
            fingerprint=report.fingerprint,
            cell_problems=str(cell_problems),
        )


def write_manifest(report: BundleReport, sample: str, out_dir: str | Path) -> Manifest:
    """Write cell_problems.parquet then manifest.json (each atomically; the manifest last)."""
    files = RawBundleFiles(Path(out_dir))
    problems_path = files.cell_problems
    with atomic_file(problems_path) as tmp:
        pq.write_table(report.cell_problems, tmp)
    manifest = Manifest.from_report(report, sample, problems_path)
    write_json(files.manifest, asdict(manifest))
    return manifest


def read_manifest(path: str | Path) -> Manifest:
    """Load a manifest written by :func:`write_manifest` (``path`` may be the file or its folder)."""
    path = Path(path)
    if path.is_dir():
        path = RawBundleFiles(path).manifest
    data = json.loads(path.read_text())
    data["dapi"] = DapiRef(**data["dapi"])
    return Manifest(**data)
