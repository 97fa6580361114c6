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
from xenium_assets.layout import ReportFiles
from xenium_assets.plots import add_scale_bar, label_colors, png_bytes
from xenium_assets.training.data import PatchDataModule, iter_patches
from xenium_assets.training.evaluate import MODEL_NAMES, Evaluation
from xenium_assets.training.morphology import FEATURE_NAMES
from xenium_assets.training.splits import SplitConfig


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

    def image(self, figure: str, png: bytes, alt: str) -> str:
        """Keep the figure (written beside the report as ``<figure>.png``) and return its Markdown link."""
        name = ReportFiles.figure(figure)
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
        files = ReportFiles(folder)
        with atomic_file(files.markdown) as tmp:
            tmp.write_text(self.markdown())
        with atomic_file(files.html) as tmp:
            tmp.write_text(self.html())
        return files.markdown, files.html


SALIENCY_PER_GROUP = 3


def _fmt(ci: tuple[float, float]) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _signed(d) -> str:
    return f"{d.point:+.3f} {_fmt(d.ci)}"


def where_the_signal_lies(ev: Evaluation) -> str:
    """One sentence: does the CNN's advantage come from the cell itself or from its surroundings?

    The cell's own signal: its own morphology features, or the CNN on the cell alone, clearly above chance. The
    surroundings': the paired gains of the full patch over the cell alone, and of the neighbours' features."""
    own = [n for n in ("morphology", "cnn_cell") if n in ev.models]
    cell_above = [n for n in own if ev.models[n].ci["macro_f1"][0] > ev.chance_p99]
    gains = [ev.differences[d] for d in ("cnn-cnn_cell", "morphology_neighbours-morphology") if d in ev.differences]
    higher = [g for g in gains if g.verdict == "higher"]
    shown = "; ".join(f"{MODEL_NAMES[g.a]} over {MODEL_NAMES[g.b]} {_signed(g)}" for g in gains)
    if cell_above:
        best = max(cell_above, key=lambda n: ev.models[n].point["macro_f1"])
        alone = f"{MODEL_NAMES[best]} alone reach {ev.models[best].point['macro_f1']:.3f} (chance {ev.chance_p99:.3f})"
    if cell_above and gains and len(higher) == len(gains):
        return f"From the cell and its surroundings: {alone}, and every view of the surroundings adds ({shown})."
    if cell_above and higher:
        return f"Mostly from the cell itself: {alone}; what the surroundings add is mixed ({shown})."
    if cell_above:
        return f"From the cell itself: {alone}, and the surroundings add nothing distinguishable ({shown})."
    if higher:
        return f"From the surroundings: no view of the cell alone is clearly above chance, but {shown}."
    return "Neither the cell alone nor its surroundings is distinguishable from chance on this test set."


def _buffer_claim(card: dict, patch_um: float) -> str:
    """What the buffer guarantees: with a margin of half a patch or more (nuclei are smaller), no test patch holds a
    training nucleus and no training patch reaches a test cell's nucleus; with less, it may."""
    margin = SplitConfig(**card["split"]).margin(patch_um)
    if margin >= patch_um / 2:
        return ": no test patch holds a pixel of a training cell's nucleus, and no training patch reaches a test cell."
    return (
        f". With a margin of {margin:g} µm (under half a {patch_um:g} µm patch), a test patch may still hold pixels "
        "of training cells' nuclei."
    )


def _answer(ev: Evaluation, card: dict) -> list[str]:
    cnn = ev.models["cnn"]
    diff = ev.differences["cnn-morphology"]
    more = {"higher": "yes", "lower": "no, it is lower", "not distinguishable": "not distinguishable"}[diff.verdict]
    lines = []
    loso = ev.extra.get("loso")
    if loso is not None and len(loso):
        lines.append(
            f"- What to expect on a new slide: **macro-F1 {loso['macro_f1'].mean():.3f}**, the mean over "
            f"{len(loso)} leave-one-sample-out models (each sample scored by a model that never saw it; per-sample "
            "intervals below). For scale: the closest published DAPI-only result, four coarse classes on a held-out "
            "Xenium slide, is about 0.62, and crossing tissues costs much more."
        )
    lines += [
        f"- Does DAPI carry signal at all? **{'yes' if ev.signal_detected else 'no'}**: macro-F1 "
        f"{cnn.point['macro_f1']:.3f} {_fmt(cnn.ci['macro_f1'])} on the tile split against a chance level of "
        f"{ev.chance_p99:.3f} (99th percentile of {len(ev.null):,} label maps shifted against the predictions); "
        f"p = {ev.p_value:.4f}.",
        f"- Does the CNN see more than simple morphology? **{more}**: CNN minus the morphology baseline "
        f"{_signed(diff)} macro-F1, paired on the same resampled blocks.",
        f"- Where does the signal lie? {where_the_signal_lies(ev)}",
        f"- Split: {card['split_description']}. {ev.extra['n_buffer_cells']:,} validation and test cells were "
        f"left out by that buffer{_buffer_claim(card, ev.extra['patch_um'])}",
        f"- Labels: reference {card['label_version']}; input: {card['data']['representation']} at "
        f"{card['data']['input_px']} px; backbone {card['train']['backbone']} (no pretrained weights).",
    ]
    return lines


def build_report(
    ev: Evaluation,
    card: dict,
    history: pd.DataFrame,
    model_dir: Path,
    test: pd.DataFrame,
    datamodule: PatchDataModule,
    classes: list[str],
    percentiles: dict,
) -> Report:
    """The report's Markdown sections and pictures (``history``: the model's per-epoch metrics)."""
    rep = Report("How well does DAPI predict the expression-defined cell class?")
    rep.add("Answer", "\n".join(_answer(ev, card)))
    unit = f"{ev.config.n_bootstrap:,} resamples of {ev.n_blocks} {ev.config.resampling_unit()}"
    loso = ev.extra.get("loso")
    if loso is not None and len(loso):
        table = ["| held-out sample | cells | macro-F1 |", "|---|---|---|"]
        table += [
            f"| {r.sample} | {r.n_cells:,} | {r.macro_f1:.3f} {_fmt((r.ci_low, r.ci_high))} |"
            for r in loso.itertuples()
        ]
        rep.add(
            "A new slide: leave one sample out",
            "\n".join(table) + f"\n\nMean {loso['macro_f1'].mean():.3f}. Each model was trained on the other samples "
            "(their tile blocks split into train and validation) and scored on every cell of the held-out sample; "
            "95 % intervals from block resamples of that sample's tiles.",
        )
    metrics = ("accuracy", "balanced_accuracy", "macro_f1")
    table = ["| model | accuracy | balanced accuracy | macro-F1 |", "|---|---|---|---|"]
    for name, scored in ev.models.items():
        label = MODEL_NAMES[name]
        if name == "cnn_cell" and ev.extra["cell_only_representation"] != "masked_dapi":
            label = f"CNN on {ev.extra['cell_only_representation']} (the model reads the cell alone)"
        cells = [f"{scored.point[m]:.3f} {_fmt(scored.ci[m])}" for m in metrics]
        table.append(f"| {label} | {' | '.join(cells)} |")
    table.append(f"| majority class (reference) | {' | '.join(f'{ev.majority[m]:.3f}' for m in metrics)} |")
    fitted, total = ev.extra["morphology_cells"]
    notes = [
        f"{len(ev.cells):,} test cells. Intervals: 95 % block bootstrap, {unit} (whole blocks, never single cells: "
        "neighbouring cells are not independent).",
        f"Morphology features ({', '.join(n.replace('_', ' ') for n in FEATURE_NAMES)}) are measured on the "
        f"pixels the CNN reads ({card['data']['input_px']} px); the logistic regressions were fitted on "
        f"{fitted:,} of the {total:,} train cells.",
        f"Chance: the CNN's macro-F1 under {len(ev.null):,} shifts of each sample's label map against the fixed "
        f"predictions (mirrored torus; docs/evaluation.md): median {np.median(ev.null):.3f}, 99th percentile "
        f"{ev.chance_p99:.3f}. The majority class is shown for reference only.",
    ]
    if card["dropped_classes"]:
        left_out = ", ".join(f"{c} ({n} patches)" for c, n in card["dropped_classes"].items())
        notes.append(f"Classes with too few patches to train on were left out: {left_out}.")
    if ev.extra["untrained_class_cells"]:
        skipped = ", ".join(f"{c} ({n})" for c, n in ev.extra["untrained_class_cells"].items())
        notes.append(f"Cells of classes the model was not trained on were skipped: {skipped}.")
    rep.add(
        "Test metrics (tile split)",
        "\n".join(table)
        + "\n\n"
        + "\n".join(f"- {n}" for n in notes)
        + "\n\n"
        + rep.image("null", null_figure(ev), "null distribution"),
    )
    diffs = ["| comparison (macro-F1) | difference | 95 % interval | verdict |", "|---|---|---|---|"]
    for d in ev.differences.values():
        diffs.append(f"| {MODEL_NAMES[d.a]} minus {MODEL_NAMES[d.b]} | {d.point:+.3f} | {_fmt(d.ci)} | {d.verdict} |")
    contrarian = [
        f"| {MODEL_NAMES[n]} | {s.point['macro_f1']:.3f} {_fmt(s.ci['macro_f1'])} |" for n, s in ev.contrarian.items()
    ]
    body = (
        "\n".join(diffs)
        + '\n\nDifferences are paired: both models on the same resampled blocks. "higher" only when the interval '
        "lies above 0.\n\n"
        + f"**{where_the_signal_lies(ev)}**\n\n"
        + f"Contrarian cells, whose label differs from most of their {8} nearest labelled neighbours' (context "
        f"cannot help there): {ev.n_contrarian:,} of {len(ev.cells):,} test cells.\n\n"
    )
    if contrarian:
        body += "| model | macro-F1 on contrarian cells |\n|---|---|\n" + "\n".join(contrarian)
    rep.add("Where the signal lies", body)
    per = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    per += [
        f"| {c} | {r.precision:.3f} | {r.recall:.3f} | {r.f1:.3f} | {int(r.support)} |"
        for c, r in ev.per_class.iterrows()
    ]
    rep.add(
        "Per class",
        "\n".join(per) + "\n\n" + rep.image("confusion", confusion_figure(ev), "confusion matrix"),
    )
    rep.add(
        "Training",
        f"Best validation macro-F1 {card['best_val_macro_f1']:.3f} after {card['epochs']} epochs.\n\n"
        + rep.image("learning_curves", learning_curves_figure(history), "learning curves"),
    )
    rep.add("What the model looks at", _saliency(rep, model_dir, card, test, datamodule, classes, percentiles))
    maps = [
        rep.image(f"slide_{s}", slide_map_figure(test, s), f"slide map {s}") for s in sorted(test["sample"].unique())
    ]
    rep.add("Predictions in place (test tiles)", "\n\n".join(maps))
    return rep


def _saliency(
    rep: Report,
    model_dir: Path,
    card: dict,
    test: pd.DataFrame,
    datamodule: PatchDataModule,
    classes: list[str],
    percentiles: dict,
) -> str:
    """Integrated gradients for up to 3 correctly and 3 wrongly classified test cells per class."""
    from xenium_assets.training.model import CellClassifier
    from xenium_assets.training.tensors import resize, to_input

    test = test.assign(correct=test["label"] == test["predicted"])
    chosen = test.groupby(["label", "correct"], group_keys=False).head(SALIENCY_PER_GROUP)
    wanted = set(chosen["key"])
    patches: dict[str, tuple] = {}
    labelled = dict(zip(test["key"], test["label"], strict=True))
    for dapi, mask, _, keys, metas in iter_patches(datamodule.splits.urls["test"], percentiles, labelled):
        for i, key in enumerate(keys):
            if key in wanted:
                patches[key] = (dapi[i], mask[i], metas[i])
    module = CellClassifier.load_from_checkpoint(model_dir / card["checkpoint"], map_location="cpu")
    size = card["data"]["input_px"]
    parts = []
    for correct in (True, False):
        rows = chosen[chosen["correct"] == correct]
        rows = rows[rows["key"].isin(patches)]
        if rows.empty:
            continue
        x = torch.stack(
            [
                to_input(np.asarray(patches[k][0] * 1.0), patches[k][1], 0.0, 1.0, card["data"]["representation"])
                for k in rows["key"]
            ]
        )
        x = resize(x, size)
        cam = integrated_gradients(module.model, x, torch.as_tensor(rows["pred"].to_numpy()))
        titles = [f"{r.label} -> {r.predicted}" for r in rows.itertuples()]
        name = "saliency_correct" if correct else "saliency_wrong"
        parts.append(
            ("Correct" if correct else "Wrong")
            + " (label -> prediction; integrated gradients of the predicted class on DAPI):\n\n"
            + rep.image(name, saliency_figure(x[:, 0].numpy(), cam, titles), name)
        )
    return "\n\n".join(parts) or "no test cells"
