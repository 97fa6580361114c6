"""The evaluation report: figures (confusion matrix, learning curves, saliency, slide maps) and the
Markdown and self-contained HTML documents that carry the answer."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from markdown_it import MarkdownIt

from xenium_assets.atomic import atomic_file
from xenium_assets.plots import add_scale_bar, label_colors, png_bytes
from xenium_assets.training.evaluate import Evaluation


def confusion_figure(ev: Evaluation) -> bytes:
    cm = ev.confusion
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 * len(ev.classes) + 2, 1.1 * len(ev.classes) + 1.5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                f"{cm[i, j]}",
                ha="center",
                va="center",
                color="white" if norm[i, j] > 0.5 else "black",
                fontsize=8,
            )
    ax.set_xticks(range(len(ev.classes)), ev.classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(ev.classes)), ev.classes, fontsize=8)
    ax.set_xlabel("predicted from DAPI")
    ax.set_ylabel("expression label")
    ax.set_title("Test confusion matrix (colour: row fraction)", fontsize=9)
    return png_bytes(fig)


def null_figure(ev: Evaluation) -> bytes:
    """The CNN's macro-F1 against its null: label maps shifted against the predictions."""
    fig, ax = plt.subplots(figsize=(6, 2.8))
    ax.hist(ev.null, bins=40, color="#8c8c8c", label=f"{len(ev.null):,} shifted label maps")
    ax.axvline(ev.chance_p99, color="#4c72b0", linestyle="--", label=f"99th percentile {ev.chance_p99:.3f}")
    observed = ev.models["cnn"].point["macro_f1"]
    ax.axvline(observed, color="#c44e52", label=f"CNN {observed:.3f} (p = {ev.p_value:.4f})")
    ax.set_xlabel("macro-F1")
    ax.set_ylabel("shifts")
    ax.set_title("Is there any signal? The CNN against chance that keeps the tissue's clumps", fontsize=9)
    ax.legend(fontsize=7)
    return png_bytes(fig)


def learning_curves_figure(history: pd.DataFrame) -> bytes:
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
    for col in ("train_loss", "val_loss"):
        if col in history:
            a.plot(history["epoch"] + 1, history[col], marker="o", label=col)
    for col in ("train_macro_f1", "val_macro_f1", "val_bal_acc"):
        if col in history:
            b.plot(history["epoch"] + 1, history[col], marker="o", label=col)
    for ax, title in ((a, "loss"), (b, "validation metrics")):
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    return png_bytes(fig)


def integrated_gradients(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, steps: int = 16) -> np.ndarray:
    """Integrated gradients of the ``target`` logit w.r.t. the DAPI channel, from a black image:
    (B, H, W) attributions (absolute, lightly smoothed, scaled to [0, 1]). Pixel-level, unlike Grad-CAM,
    whose last feature map is 2 x 2 for a 64 px input."""
    from scipy import ndimage

    model.eval()
    alphas = torch.linspace(1 / steps, 1.0, steps)
    baseline = torch.zeros_like(x)
    baseline[:, 1:] = x[:, 1:]  # masks stay: only the DAPI intensities are attributed
    path = baseline[None] + alphas[:, None, None, None, None] * (x - baseline)[None]
    path = path.reshape(-1, *x.shape[1:]).requires_grad_(True)
    logits = model(path)
    logits.gather(1, target.repeat(steps)[:, None]).sum().backward()
    grads = path.grad.reshape(steps, *x.shape).mean(dim=0)
    attribution = ((x - baseline) * grads)[:, 0].abs().detach().numpy()
    attribution = ndimage.gaussian_filter(attribution, sigma=(0, 1.0, 1.0))
    return attribution / np.maximum(attribution.reshape(len(x), -1).max(axis=1), 1e-12)[:, None, None]


def saliency_figure(dapi: np.ndarray, cam: np.ndarray, titles: list[str]) -> bytes:
    """Patches with their saliency overlaid, in rows of at most 6."""
    n = len(titles)
    cols = min(6, max(n, 1))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 2.0 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        ax = axes.ravel()[i]
        ax.imshow(dapi[i], cmap="gray", vmin=0, vmax=1)
        ax.imshow(cam[i], cmap="inferno", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(titles[i], fontsize=6)
    fig.tight_layout()
    return png_bytes(fig)


def slide_map_figure(test: pd.DataFrame, sample: str) -> bytes:
    """Test cells of one sample in place: expression label, prediction, and where they disagree."""
    cells = test[test["sample"] == sample]
    colors = label_colors(list(test["label"]) + list(test["predicted"]))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for ax, column, title in ((axes[0], "label", "expression label"), (axes[1], "predicted", "predicted from DAPI")):
        for name, group in cells.groupby(column):
            ax.scatter(group["x_um"], group["y_um"], s=6, color=colors[name], label=name, linewidths=0)
        ax.set_title(f"{sample}: {title}", fontsize=9)
        ax.legend(fontsize=6, markerscale=2)
    right = cells["label"] == cells["predicted"]
    axes[2].scatter(cells.loc[right, "x_um"], cells.loc[right, "y_um"], s=6, color="#55a868", label="correct")
    axes[2].scatter(cells.loc[~right, "x_um"], cells.loc[~right, "y_um"], s=6, color="#c44e52", label="wrong")
    axes[2].set_title(f"{sample}: {right.mean():.0%} correct on test tiles", fontsize=9)
    axes[2].legend(fontsize=6, markerscale=2)
    extent = float(cells["x_um"].max() - cells["x_um"].min()) if len(cells) else 0.0
    for ax in axes:
        ax.set_aspect("equal")
        ax.invert_yaxis()
        ax.set_xlabel("x (µm)")
        if extent > 0:
            add_scale_bar(ax, extent, color="black")
    return png_bytes(fig)


@dataclass
class Report:
    title: str
    sections: list[tuple[str, str]] = field(default_factory=list)
    """(heading, markdown body); images are referenced as ![alt](name.png)."""
    images: dict[str, bytes] = field(default_factory=dict)

    def add(self, heading: str, body: str) -> None:
        self.sections.append((heading, body))

    def image(self, name: str, png: bytes, alt: str) -> str:
        self.images[name] = png
        return f"![{alt}]({name})"

    def markdown(self) -> str:
        return f"# {self.title}\n\n" + "\n\n".join(f"## {h}\n\n{b}" for h, b in self.sections) + "\n"

    def html(self) -> str:
        """The same report with every image inlined: one file to send or archive."""
        md = MarkdownIt("commonmark", {"html": False}).enable("table")
        # Raw HTML stays off: class and sample names come from data and must render as text.
        tokens = md.parse(self.markdown())
        held = {md.normalizeLink(name): png for name, png in self.images.items()}
        for token in tokens:
            for child in token.children or ():
                if child.type == "image" and (png := held.get(str(child.attrGet("src")))) is not None:
                    child.attrSet("src", "data:image/png;base64," + base64.b64encode(png).decode())
        body = md.renderer.render(tokens, md.options, {})
        style = (
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}img{max-width:100%}"
        )
        return (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
            f"<style>{style}</style></head><body>\n{body}</body></html>"
        )

    def write(self, folder: Path) -> tuple[Path, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        for name, png in self.images.items():
            with atomic_file(folder / name) as tmp:
                tmp.write_bytes(png)
        with atomic_file(folder / "report.md") as tmp:
            tmp.write_text(self.markdown())
        with atomic_file(folder / "report.html") as tmp:
            tmp.write_text(self.html())
        return folder / "report.md", folder / "report.html"
