"""Draw docs/images/asset_graph.png: the asset graph of the code location, as Dagster resolves it.

Regenerate it after changing an asset, its dependencies, partitions, group, automation or checks:

    .venv/bin/python docs/images/asset_graph.py [OUT.png]

Boxes are assets (name, partitioning, how declarative automation materializes it; colour: its group), laid out
left to right by dependency depth; the checks hang under their asset ("blocking" stops downstream materialization).
"""

from __future__ import annotations

import sys
import warnings
from itertools import permutations, product
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from dagster import DynamicPartitionsDefinition, MultiPartitionsDefinition  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch  # noqa: E402

OUT = Path(__file__).with_name("asset_graph.png")
AUTOMATION = {"settled_eager": "automated", "built_when_missing": "built when missing"}
"""Words for the project's automation conditions (by their label); others show as 'automated (label)'."""
BOX_W, BOX_H, COL_GAP, ROW_STEP = 3.1, 0.62, 0.8, 1.3


def partitioning(partitions_def) -> str:
    """'per sample', 'sample x tile', or 'one for the project'."""
    if partitions_def is None:
        return "one for the project"
    if isinstance(partitions_def, MultiPartitionsDefinition):
        return " x ".join(dim.name.lower() for dim in partitions_def.partitions_defs)
    if isinstance(partitions_def, DynamicPartitionsDefinition):
        return f"per {partitions_def.name.removesuffix('s')}"
    return type(partitions_def).__name__


def automation(condition) -> str:
    """How declarative automation materializes the asset ('' if it does not)."""
    if condition is None:
        return ""
    label = condition.get_label()
    return AUTOMATION.get(label, f"automated ({label})" if label else "automated")


def graph() -> tuple[dict, dict]:
    """Each asset's parents, partitioning, group and automation, and each asset's checks (name, blocking)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from xenium_assets.definitions import defs

        asset_graph = defs.get_repository_def().asset_graph
    nodes, checks = {}, {}
    for key in asset_graph.get_all_asset_keys():
        node = asset_graph.get(key)
        nodes[key.to_user_string()] = {
            "parents": sorted(p.to_user_string() for p in node.parent_keys),
            "partitions": partitioning(node.partitions_def),
            "group": node.group_name,
            "automation": automation(node.automation_condition),
        }
    for check in asset_graph.asset_check_keys:
        blocking = asset_graph.get_check_spec(check).blocking
        checks.setdefault(check.asset_key.to_user_string(), []).append((check.name, blocking))
    return nodes, checks


def layout(nodes: dict) -> tuple[dict[str, tuple[float, float]], dict[tuple[str, str], list[tuple[float, float]]]]:
    """Each asset's box corner (columns by the longest path from a root) and each edge's bends: an edge that skips
    columns passes through a free slot in each (a dummy node); slots are ordered by their parents' mean slot."""
    depth: dict[str, int] = {}

    def level(name: str) -> int:
        if name not in depth:
            depth[name] = 1 + max((level(p) for p in nodes[name]["parents"]), default=-1)
        return depth[name]

    for name in nodes:
        level(name)
    parents = {name: list(node["parents"]) for name, node in nodes.items()}
    chains: dict[tuple[str, str], list[str]] = {}
    for child, node in nodes.items():
        for parent in node["parents"]:
            dummies = [f"{parent}>{child}@{d}" for d in range(depth[parent] + 1, depth[child])]
            previous = parent
            for d, dummy in enumerate(dummies, start=depth[parent] + 1):
                depth[dummy], parents[dummy] = d, [previous]
                previous = dummy
            parents[child] = [previous if p == parent else p for p in parents[child]]
            chains[parent, child] = dummies
    columns: dict[int, list[str]] = {}
    for name in sorted(depth):
        columns.setdefault(depth[name], []).append(name)
    tallest = max(len(c) for c in columns.values())
    edges = [(parent, child) for child, ps in parents.items() for parent in ps]

    def rows(order: tuple[tuple[str, ...], ...]) -> dict[str, float]:
        return {n: i + (tallest - len(column)) / 2 for column in order for i, n in enumerate(column)}

    def cost(order: tuple[tuple[str, ...], ...]) -> tuple[int, float]:
        """Crossings between neighbouring columns, then the edges' total vertical travel."""
        row = rows(order)
        crossings = sum(
            (row[a] - row[c]) * (row[b] - row[d]) < 0
            for i, (a, b) in enumerate(edges)
            for c, d in edges[i + 1 :]
            if depth[a] == depth[c]
        )
        return crossings, sum(abs(row[a] - row[b]) for a, b in edges)

    # Every order of every column (a handful here): the one with the fewest crossings, then the straightest.
    best = min(product(*(permutations(columns[d]) for d in sorted(columns))), key=cost)
    row = rows(best)
    where = {n: (depth[n] * (BOX_W + COL_GAP), -row[n] * ROW_STEP) for n in depth}
    bends = {edge: [where[dummy] for dummy in dummies] for edge, dummies in chains.items()}
    return {name: where[name] for name in nodes}, bends


def arrow(ax, points: list[tuple[float, float]]) -> None:
    """Straight segments through ``points``, the last with an arrow head."""
    for i, (a, b) in enumerate(zip(points[:-1], points[1:], strict=True)):
        last = i == len(points) - 2
        style = "-|>" if last else "-"
        ax.add_patch(
            FancyArrowPatch(a, b, arrowstyle=style, mutation_scale=12, color="0.35", lw=1, shrinkA=0, shrinkB=2 * last)
        )


def draw(out: Path = OUT) -> Path:
    nodes, checks = graph()
    where, bends = layout(nodes)
    groups = sorted({n["group"] for n in nodes.values()})
    colour = dict(zip(groups, plt.get_cmap("Pastel1").colors, strict=False))
    xs, ys = [x for x, _ in where.values()], [y for _, y in where.values()]
    left, right, bottom, top = min(xs) - 0.2, max(xs) + BOX_W + 0.2, min(ys) - 0.6, max(ys) + BOX_H + 0.3
    fig, ax = plt.subplots(figsize=((right - left) * 0.95, (top - bottom) * 0.95))
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.set_axis_off()
    for name, node in nodes.items():
        x, y = where[name]
        box = FancyBboxPatch(
            (x, y), BOX_W, BOX_H, boxstyle="round,pad=0.02,rounding_size=0.08", fc=colour[node["group"]]
        )
        ax.add_patch(box)
        ax.text(x + BOX_W / 2, y + BOX_H * 0.66, name, ha="center", va="center", fontsize=10, weight="bold")
        detail = ", ".join(filter(None, (node["partitions"], node["automation"])))
        ax.text(x + BOX_W / 2, y + BOX_H * 0.27, detail, ha="center", va="center", fontsize=8)
        for i, (check, blocking) in enumerate(sorted(checks.get(name, []))):
            text = f"check: {check}" + (" (blocking)" if blocking else "")
            ax.text(
                x + 0.05, y - 0.15 - 0.2 * i, text, fontsize=7.5, va="center", color="darkred" if blocking else "0.2"
            )
        for parent in node["parents"]:
            px, py = where[parent]
            points = [(px + BOX_W, py + BOX_H / 2)]
            for bx, by in bends[parent, name]:
                points += [(bx, by + BOX_H / 2), (bx + BOX_W, by + BOX_H / 2)]
            arrow(ax, [*points, (x, y + BOX_H / 2)])
    ax.legend(
        handles=[Patch(fc=colour[g], ec="0.3", label=g) for g in groups],
        title="asset group",
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),  # below the graph: no box lies under it
        ncol=len(groups),
        fontsize=8,
        title_fontsize=8,
        frameon=False,
    )
    fig.savefig(out, dpi=90, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(draw(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT))
