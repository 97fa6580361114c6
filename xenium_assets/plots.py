"""Figures as PNG bytes (headless), for Dagster metadata and reports."""

from __future__ import annotations

import io

import matplotlib
import numpy as np

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


def scale_bar_length(extent: float) -> float:
    """A round length (1, 2 or 5 times a power of ten) of at most a fifth of ``extent``."""
    target = max(extent / 5, 1e-9)
    power = 10 ** np.floor(np.log10(target))
    return float(max(m * power for m in (1, 2, 5) if m * power <= target))


def add_scale_bar(ax, extent_um: float, color: str = "white") -> float:
    """A scale bar in the lower left of ``ax`` (data coordinates in µm); returns its length."""
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    length = scale_bar_length(extent_um)
    bar = AnchoredSizeBar(
        ax.transData,
        length,
        f"{length:g} µm",
        "lower left",
        pad=0.5,
        color=color,
        frameon=False,
        size_vertical=extent_um / 250,
    )
    ax.add_artist(bar)
    return length
