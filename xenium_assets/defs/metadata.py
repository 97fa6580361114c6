"""Helpers that turn library results into Dagster metadata values."""

from __future__ import annotations

from collections.abc import Mapping

from dagster import MetadataValue


def counts_table(counts: Mapping[str, int], label: str = "reason") -> MetadataValue:
    """A two-column markdown table (reads well in the UI, empty-safe)."""
    if not counts:
        return MetadataValue.md("none")
    rows = "\n".join(f"| {k} | {v:,} |" for k, v in counts.items())
    return MetadataValue.md(f"| {label} | cells |\n|---|---:|\n{rows}")


def bullet_list(lines: list[str]) -> MetadataValue:
    return MetadataValue.md("\n".join(f"- {line}" for line in lines) if lines else "none")
