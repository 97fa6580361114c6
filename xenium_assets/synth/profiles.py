"""What differs between XOA releases, as far as a bundle's files are concerned.

One profile per release the generator writes; the writers branch on these flags, never on version
numbers, so adding a release is adding a profile.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from xenium_assets.formats import FeatureType

ImageLayout = Literal["v1", "v2", "v4"]
ZarrLayout = Literal["v1.0", "v1.3", "v2"]


@dataclass(frozen=True)
class XoaProfile:
    """File-format traits of one Xenium Onboard Analysis release."""

    key: str
    analysis_sw_version: str
    image_layout: ImageLayout
    zarr_layout: ZarrLayout
    string_ids: bool
    """False: XOA 1.0 integer ids (1..N). True: 'aaaabbbb-1' ids from the uint32 prefix."""
    binary_parquet_ids: bool
    """XOA 1.3-1.x store cell_id (and feature_name) as arrow binary in Parquet."""
    label_id: bool
    """Boundaries carry label_id (the mask value) from 2.0 on."""
    multinucleate: bool
    """From 2.0 a cell may have 0 or several nuclei."""
    transcript_fov: bool
    """fov_name and nucleus_distance columns (late 1.x on)."""
    transcript_codewords: bool
    """codeword_index, codeword_category and is_gene columns (3.0 on)."""
    csv_transcripts: bool
    """transcripts.csv.gz exists up to 2.x and was dropped in 3.0."""
    control_types: tuple[FeatureType, ...]

    @property
    def major(self) -> int:
        return int(self.key.split(".")[0])


_XOA1 = XoaProfile(
    key="1",
    analysis_sw_version="Xenium-1.0.1",
    image_layout="v1",
    zarr_layout="v1.0",
    string_ids=False,
    binary_parquet_ids=False,
    label_id=False,
    multinucleate=False,
    transcript_fov=False,
    transcript_codewords=False,
    csv_transcripts=True,
    control_types=(FeatureType.NEG_PROBE, FeatureType.NEG_CODEWORD, FeatureType.BLANK),
)
# Each later release as the changes from the one before it.
_XOA17 = replace(
    _XOA1,
    key="1.7",
    analysis_sw_version="xenium-1.7.1.0",
    zarr_layout="v1.3",
    string_ids=True,
    binary_parquet_ids=True,
    transcript_fov=True,
    control_types=(FeatureType.NEG_PROBE, FeatureType.NEG_CODEWORD, FeatureType.UNASSIGNED),
)
_XOA2 = replace(
    _XOA17,
    key="2",
    analysis_sw_version="xenium-2.0.0.10",
    image_layout="v2",
    zarr_layout="v2",
    binary_parquet_ids=False,
    label_id=True,
    multinucleate=True,
    control_types=(*_XOA17.control_types, FeatureType.DEPRECATED),
)
_XOA3 = replace(
    _XOA2,
    key="3",
    analysis_sw_version="xenium-3.0.0.15",
    transcript_codewords=True,
    csv_transcripts=False,
    control_types=(*_XOA2.control_types, FeatureType.GENOMIC),
)
_XOA4 = replace(_XOA3, key="4", analysis_sw_version="xenium-4.0.1.0", image_layout="v4")

PROFILES: dict[str, XoaProfile] = {p.key: p for p in (_XOA1, _XOA17, _XOA2, _XOA3, _XOA4)}
VERSION_CHOICES = tuple(PROFILES)
