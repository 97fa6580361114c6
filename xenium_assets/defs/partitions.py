"""Partitions: one dynamic partition per registered sample, and sample x tile for patch shards."""

from dagster import DynamicPartitionsDefinition, MultiPartitionsDefinition, StaticPartitionsDefinition

from xenium_assets.patches.grid import TILE_KEYS

SAMPLES = "samples"

sample_partitions = DynamicPartitionsDefinition(name=SAMPLES)
tile_partitions = StaticPartitionsDefinition(list(TILE_KEYS))
sample_tile_partitions = MultiPartitionsDefinition({"sample": sample_partitions, "tile": tile_partitions})
