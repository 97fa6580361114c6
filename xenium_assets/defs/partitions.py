"""Partitions: one dynamic partition per registered sample."""

from dagster import DynamicPartitionsDefinition

SAMPLES = "samples"

sample_partitions = DynamicPartitionsDefinition(name=SAMPLES)
