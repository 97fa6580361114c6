"""Figures as PNG bytes (headless), for Dagster metadata and reports."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def png_bytes(fig: Figure, dpi: int = 80) -> bytes:
    """Render and close ``fig``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def label_colors(labels: list[str]) -> dict[str, tuple]:
    """A stable colour per label (sorted), grey for 'Unassigned'."""
    cmap = plt.get_cmap("tab20")
    order = [*range(0, 20, 2), *range(1, 20, 2)]  # tab20's strong shades first: neighbours in it are near-twins
    colors = {name: cmap(order[i % 20]) for i, name in enumerate(sorted(set(labels) - {"Unassigned"}))}
    colors["Unassigned"] = (0.75, 0.75, 0.75, 1.0)
    return colors
