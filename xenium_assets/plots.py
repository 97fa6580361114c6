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


LegendGroup = tuple[str, list[tuple[str, tuple]]]
"""A titled block of a legend: its title and (text, RGBA colour in 0..1) entries."""


def legend_panel(
    groups: list[LegendGroup], height: int, background: str = "black", foreground: str = "white", font_pt: float = 9
) -> np.ndarray:
    """A legend of ``groups`` as RGB pixels, ``height`` rows tall (taller if its entries need it), as wide as its
    longest line. Swatches are drawn unblended, so each colour's exact 8-bit value is in the picture."""
    from matplotlib.patches import Rectangle

    dpi, pad, line = 100, 12, round(font_pt * 2.1)
    needed = 2 * pad + sum((1 + len(entries)) * line for _, entries in groups) + max(len(groups) - 1, 0) * (line // 2)
    tall = max(height, needed)
    fig = plt.figure(figsize=(8, tall / dpi), dpi=dpi, facecolor=background)
    ax = fig.add_axes((0, 0, 1, 1), xlim=(0, 8 * dpi), ylim=(tall, 0), facecolor=background)
    ax.set_axis_off()
    y, texts, swatch = pad, [], line - 6
    for title, entries in groups:
        texts.append(ax.text(pad, y, title, color=foreground, fontsize=font_pt, weight="bold", va="top"))
        y += line
        for text, colour in entries:
            ax.add_patch(Rectangle((pad, y), swatch, swatch, facecolor=colour, edgecolor="none", antialiased=False))
            texts.append(
                ax.text(pad + swatch + 6, y + swatch / 2, text, color=foreground, fontsize=font_pt, va="center")
            )
            y += line
        y += line // 2
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    right = max((t.get_window_extent().x1 for t in texts), default=0)
    return rgb[:, : min(rgb.shape[1], int(np.ceil(right)) + pad)]


def with_legend(image: np.ndarray, groups: list[LegendGroup], background: str = "black") -> np.ndarray:
    """``image`` (RGB or RGBA pixels, unchanged at the top left) with a legend panel of ``groups`` on its right."""
    from matplotlib.colors import to_rgb

    rgb = np.asarray(image)[..., :3].astype(np.uint8)
    panel = legend_panel(groups, rgb.shape[0], background=background)
    height = max(rgb.shape[0], panel.shape[0])
    fill = np.round(np.array(to_rgb(background)) * 255)
    out = np.empty((height, rgb.shape[1] + panel.shape[1], 3), dtype=np.uint8)
    out[...] = fill.astype(np.uint8)
    out[: rgb.shape[0], : rgb.shape[1]] = rgb
    out[: panel.shape[0], rgb.shape[1] :] = panel
    return out
