"""Helpers that turn library results into Dagster metadata values."""

from __future__ import annotations

from collections.abc import Mapping

from dagster import MetadataValue


def counts_table(counts: Mapping[str, int], label: str = "reason", unit: str = "cells") -> MetadataValue:
    """A two-column markdown table (reads well in the UI, empty-safe)."""
    if not counts:
        return MetadataValue.md("none")
    rows = "\n".join(f"| {k} | {v:,} |" for k, v in counts.items())
    return MetadataValue.md(f"| {label} | {unit} |\n|---|---:|\n{rows}")


def bullet_list(lines: list[str]) -> MetadataValue:
    return MetadataValue.md("\n".join(f"- {line}" for line in lines) if lines else "none")


def image(png: bytes, alt: str = "figure") -> MetadataValue:
    """A PNG shown inline in the Dagster UI (Dagster has no image metadata type: markdown data URI)."""
    import base64

    return MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def images(pngs: Mapping[str, bytes]) -> MetadataValue:
    """Several captioned PNGs in one markdown block."""
    import base64

    return MetadataValue.md(
        "\n\n".join(
            f"**{name}**\n\n![{name}](data:image/png;base64,{base64.b64encode(p).decode()})" for name, p in pngs.items()
        )
    )


def frame_table(frame, index_label: str = "") -> MetadataValue:
    """A small DataFrame as a markdown table."""
    header = "| " + " | ".join([index_label, *map(str, frame.columns)]) + " |"
    rule = "|" + "---|" * (len(frame.columns) + 1)
    rows = [
        "| " + " | ".join([str(i), *map(str, r)]) + " |" for i, r in zip(frame.index, frame.to_numpy(), strict=True)
    ]
    return MetadataValue.md("\n".join([header, rule, *rows]))
