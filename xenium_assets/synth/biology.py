"""The synthetic tissue: where cells sit, which class each is, how its nucleus looks, what it expresses.

Classes occupy spatially coherent regions (as in tissue), each class has marker genes *and* its own
nuclear morphology, and the morphology distributions overlap so that predicting the class from DAPI
is learnable but not trivial. With ``null=True`` morphology is drawn independently of the class: a
negative control on which no DAPI model may find signal. ``independent_regions`` gives the clumped kind
of that control: morphology follows a region map of its own, so neighbours look alike (as tissue does)
and a model that learns the neighbourhood rather than the nucleus still finds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree


@dataclass(frozen=True)
class CellClass:
    """Expression markers and nuclear morphology of one cell class (lengths in µm)."""

    name: str
    markers: tuple[str, ...]
    semi_major_um: float
    aspect: float
    irregularity: float
    brightness: float
    texture_fine: float
    texture_coarse: float


# Morphology follows textbook H&E/DAPI impressions: lymphocytes small, round, bright and coarse;
# fibroblasts elongated; macrophages large, dim, irregular (kidney-like); epithelial in between.
# Epithelial and macrophage nuclei overlap deliberately in size and brightness.
CLASSES: tuple[CellClass, ...] = (
    CellClass("epithelial", ("EPCAM", "KRT8", "KRT18", "CDH1", "CLDN4", "ELF3"), 4.0, 1.3, 0.05, 1.0, 0.10, 0.16),
    CellClass("fibroblast", ("COL1A1", "COL1A2", "DCN", "LUM", "PDGFRA", "FBLN1"), 4.6, 2.4, 0.04, 1.1, 0.08, 0.07),
    CellClass("lymphocyte", ("CD3D", "CD3E", "CD2", "TRAC", "IL7R", "CD247"), 2.8, 1.1, 0.04, 1.5, 0.24, 0.22),
    CellClass("macrophage", ("CD68", "CD163", "LYZ", "C1QA", "C1QB", "AIF1"), 4.3, 1.35, 0.14, 0.8, 0.06, 0.12),
    CellClass("endothelial", ("PECAM1", "VWF", "CDH5", "KDR", "CLDN5", "EMCN"), 4.4, 2.0, 0.05, 0.9, 0.09, 0.09),
)
SHARED_GENES: tuple[str, ...] = ("ACTB", "GAPDH", "B2M", "RPLP0", "UBC", "PPIA", "HPRT1", "TBP")

MIN_AREA_PER_CELL_UM2 = 100.0
"""Below this the lattice spacing (about 10 µm) squeezes nuclei until classes lose their shapes."""

# Fractions of cells with two nuclei / no nucleus, in releases that allow it (XOA >= 2).
MULTINUCLEATE_FRACTION = 0.03
ANUCLEATE_FRACTION = 0.01


@dataclass
class Population:
    """Per-cell ground truth, one row per cell, in the final cell order."""

    xy_um: np.ndarray  # (N, 2) nucleus centre, µm
    cls: np.ndarray  # (N,) expression class index
    morph_cls: np.ndarray  # (N,) class whose morphology the nucleus was drawn from
    semi_major: np.ndarray  # (N,) µm
    semi_minor: np.ndarray
    angle: np.ndarray  # (N,) radians
    harmonics: np.ndarray  # (N, 4) amplitude/phase of the 2nd and 3rd radial harmonic
    brightness: np.ndarray  # (N,) relative DAPI intensity
    texture_fine: np.ndarray
    texture_coarse: np.ndarray
    n_nuclei: np.ndarray  # (N,) 0, 1 or 2

    def __len__(self) -> int:
        return len(self.cls)


def place_cells(n: int, width_um: float, height_um: float, margin_um: float, rng: np.random.Generator) -> np.ndarray:
    """Nucleus centres on a jittered hexagonal lattice: tissue-like spacing without a Python loop."""
    area = (width_um - 2 * margin_um) * (height_um - 2 * margin_um)
    if area <= 0 or area / n < MIN_AREA_PER_CELL_UM2:
        max_cells = int(max(area, 0) / MIN_AREA_PER_CELL_UM2)
        raise ValueError(
            f"{n} cells do not fit in {width_um:.0f} x {height_um:.0f} µm (at most {max_cells}): "
            "lower --cells or raise --width/--height"
        )
    # Spacing so that the lattice holds ~15 % more sites than cells; the surplus is removed at random.
    spacing = np.sqrt(area / (1.15 * n) * 2 / np.sqrt(3))
    ys = np.arange(margin_um + spacing / 2, height_um - margin_um, spacing * np.sqrt(3) / 2)
    xs = np.arange(margin_um + spacing / 2, width_um - margin_um, spacing)
    gx, gy = np.meshgrid(xs, ys)
    gx = gx + (np.arange(len(ys))[:, None] % 2) * spacing / 2
    sites = np.column_stack([gx.ravel(), gy.ravel()])
    sites = sites[(sites[:, 0] < width_um - margin_um) & (sites[:, 1] < height_um - margin_um)]
    if len(sites) < n:
        raise ValueError(f"only {len(sites)} lattice sites for {n} cells: lower --cells")
    sites = sites[rng.choice(len(sites), size=n, replace=False)]
    sites += rng.uniform(-0.1, 0.1, size=sites.shape) * spacing
    return sites


def assign_regions(
    xy_um: np.ndarray, n_classes: int, width_um: float, height_um: float, purity: float, rng: np.random.Generator
) -> np.ndarray:
    """Class per cell from a Voronoi map of class regions, with a fraction ``1 - purity`` of mixing."""
    n_seeds = max(3 * n_classes, int(width_um * height_um / 250.0**2))
    seeds = rng.uniform([0, 0], [width_um, height_um], size=(n_seeds, 2))
    seed_class = rng.permutation(np.arange(n_seeds) % n_classes)
    _, nearest = cKDTree(seeds).query(xy_um)
    cls = seed_class[nearest]
    mixed = rng.random(len(cls)) > purity
    cls[mixed] = rng.integers(0, n_classes, size=int(mixed.sum()))
    return cls


def independent_regions(
    xy_um: np.ndarray,
    cls: np.ndarray,
    n_classes: int,
    width_um: float,
    height_um: float,
    purity: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Class per cell from a second region map, drawn like ``assign_regions`` but independent of ``cls``.

    Its classes are renamed by size, the largest taking the commonest class of ``cls`` and so on, so that
    class proportions stay close to those of ``cls`` without tying any cell to its own class.
    """
    other = assign_regions(xy_um, n_classes, width_um, height_um, purity, rng)
    rename = np.empty(n_classes, dtype=other.dtype)
    by_size = np.argsort(-np.bincount(other, minlength=n_classes), kind="stable")
    rename[by_size] = np.argsort(-np.bincount(cls, minlength=n_classes), kind="stable")
    return rename[other]


def draw_morphology(
    xy_um: np.ndarray,
    cls: np.ndarray,
    classes: tuple[CellClass, ...],
    *,
    null: bool,
    multinucleate: bool,
    rng: np.random.Generator,
    morph_cls: np.ndarray | None = None,
) -> Population:
    """Nuclear shape and staining per cell, scaled down where neighbours are too close to fit it.

    ``morph_cls`` (e.g. from ``independent_regions``) sets the class each nucleus looks like; by default it is
    the cell's own class, or with ``null`` a random class drawn cell by cell.
    """
    n = len(cls)
    if morph_cls is None:
        morph_cls = rng.choice(len(classes), size=n, p=np.bincount(cls, minlength=len(classes)) / n) if null else cls
    param = np.array(
        [[c.semi_major_um, c.aspect, c.irregularity, c.brightness, c.texture_fine, c.texture_coarse] for c in classes]
    )[morph_cls]
    semi_major = param[:, 0] * np.exp(rng.normal(0, 0.12, n))
    aspect = 1 + (param[:, 1] - 1) * np.exp(rng.normal(0, 0.25, n))
    irregular = param[:, 2]
    harmonics = np.column_stack(
        [
            rng.normal(0, 1, n) * irregular / 2,
            rng.uniform(0, 2 * np.pi, n),
            irregular * rng.uniform(0.5, 1.0, n),
            rng.uniform(0, 2 * np.pi, n),
        ]
    )
    n_nuclei = np.ones(n, dtype=np.int8)
    if multinucleate:
        u = rng.random(n)
        n_nuclei[u < MULTINUCLEATE_FRACTION] = 2
        n_nuclei[u > 1 - ANUCLEATE_FRACTION] = 0
    # Keep every nucleus well inside half the distance to its nearest neighbour: nuclei never touch and
    # stay inside their (Voronoi-bounded) cell.
    extent = semi_major * (1 + np.abs(harmonics[:, 0]) + harmonics[:, 2])
    extent = np.where(n_nuclei == 2, extent * 1.45, extent)
    nn_dist = cKDTree(xy_um).query(xy_um, k=2)[0][:, 1]
    shrink = np.minimum(1.0, 0.45 * nn_dist / extent)
    semi_major = semi_major * shrink
    return Population(
        xy_um=xy_um,
        cls=cls,
        morph_cls=morph_cls,
        semi_major=semi_major,
        semi_minor=semi_major / aspect,
        angle=rng.uniform(0, np.pi, n),
        harmonics=harmonics,
        brightness=param[:, 3] * np.exp(rng.normal(0, 0.15, n)),
        texture_fine=param[:, 4] * np.exp(rng.normal(0, 0.2, n)),
        texture_coarse=param[:, 5] * np.exp(rng.normal(0, 0.2, n)),
        n_nuclei=n_nuclei,
    )


@dataclass(frozen=True)
class Panel:
    """Gene panel: gene symbols (classes' markers, then shared genes) and the mean count matrix."""

    genes: tuple[str, ...]
    mean: np.ndarray  # (n_classes, n_genes) expected counts per cell
    depth: float = 1.0
    """The sample's sequencing depth: every cell's expected counts are scaled by it."""


def build_panel(classes: tuple[CellClass, ...], rng: np.random.Generator) -> Panel:
    """Markers are high in their class and near zero elsewhere; shared genes are everywhere."""
    genes = tuple(g for c in classes for g in c.markers) + SHARED_GENES
    mean = np.zeros((len(classes), len(genes)))
    col = 0
    for k, c in enumerate(classes):
        mean[:, col : col + len(c.markers)] = 0.15
        mean[k, col : col + len(c.markers)] = rng.uniform(3.0, 9.0, len(c.markers))
        col += len(c.markers)
    mean[:, col:] = rng.uniform(1.0, 4.0, len(SHARED_GENES))
    return Panel(genes=genes, mean=mean)


def shift_panel(panel: Panel, classes: tuple[CellClass, ...], shift: float, rng: np.random.Generator) -> Panel:
    """The panel as one sample measures it: a batch effect, as between runs and tissues.

    Every non-marker entry of the mean matrix (a gene in the classes it does not mark, and the shared genes)
    is scaled by this sample's own factor for that gene, exp(N(0, shift)), and the sample's depth by
    exp(N(0, shift / 2)); a class's markers keep their level. Zero leaves the panel as it is.
    """
    if shift <= 0:
        return panel
    marker = np.zeros(panel.mean.shape, dtype=bool)
    col = 0
    for k, c in enumerate(classes):
        marker[k, col : col + len(c.markers)] = True
        col += len(c.markers)
    factor = np.exp(rng.normal(0, shift, len(panel.genes)))
    mean = np.where(marker, panel.mean, panel.mean * factor[None, :])
    return Panel(genes=panel.genes, mean=mean, depth=float(np.exp(rng.normal(0, shift / 2))))


def draw_counts(panel: Panel, cls: np.ndarray, rng: np.random.Generator, dispersion: float = 2.0) -> np.ndarray:
    """Gene counts per cell from a negative binomial (overdispersed like real spatial counts)."""
    size_factor = panel.depth * np.exp(rng.normal(0, 0.35, len(cls)))
    mu = panel.mean[cls] * size_factor[:, None]
    return rng.negative_binomial(dispersion, dispersion / (dispersion + mu)).astype(np.int32)
