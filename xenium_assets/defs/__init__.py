"""The Dagster layer: partitions, resources and assets that wire the library together.

Nothing here computes anything itself; each asset calls library functions, then reports what they
did as materialization metadata.
"""
