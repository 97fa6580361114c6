"""Partitions: one dynamic partition per registered sample, sample x tile for patch shards, and one per DAPI-only
image to predict on."""

from dagster import DynamicPartitionsDefinition, MultiPartitionsDefinition, StaticPartitionsDefinition

from xenium_assets.patches.grid import TILE_KEYS

SAMPLES = "samples"
IMAGES = "images"

sample_partitions = DynamicPartitionsDefinition(name=SAMPLES)
image_partitions = DynamicPartitionsDefinition(name=IMAGES)
"""DAPI-only images added with ``xenium-assets add-image`` or dropped in the image landing folder."""
tile_partitions = StaticPartitionsDefinition(list(TILE_KEYS))
sample_tile_partitions = MultiPartitionsDefinition({"sample": sample_partitions, "tile": tile_partitions})
