"""Synthetic Xenium bundles faithful enough for the field's readers, with known ground truth."""

from xenium_assets.synth.generate import SynthParams, SynthResult, generate_bundle, truth_labels, truth_paths
from xenium_assets.synth.profiles import PROFILES, VERSION_CHOICES

__all__ = [
    "PROFILES",
    "VERSION_CHOICES",
    "SynthParams",
    "SynthResult",
    "generate_bundle",
    "truth_labels",
    "truth_paths",
]
