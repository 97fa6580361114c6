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
from scipy import ndimage
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

LATTICE_SURPLUS = 1.15
"""The lattice holds this many sites per cell; the surplus is removed at random (vacancies, as in tissue)."""
NUCLEUS_REACH = 0.45
"""A nucleus reaches at most this share of the distance to its nearest neighbour: nuclei never touch."""

# Crowded tissue (``place_crowded_cells``): dense epithelium or a lymphoid aggregate, where nuclei touch.
CROWDED_SPACING_UM = 6.5
"""Lattice spacing of the crowded regions, below most nuclei's diameters (about 7 µm in real dense tissue)."""
CROWDED_JITTER = 0.15
"""Jitter of a crowded site, as a share of the spacing (0.1 elsewhere)."""
CROWDED_REACH = 0.9
"""A crowded nucleus may reach this share of the distance to its nearest neighbour (``NUCLEUS_REACH``
elsewhere); where it then overlaps a neighbour, both are cut flat where they meet (``shapes.build_outlines``)."""
CROWDED_REGION_UM = 40.0
"""Length scale of the map of crowded regions: patches of about 2-5 times this across."""

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
    spacing = np.sqrt(area / (LATTICE_SURPLUS * n) * 2 / np.sqrt(3))
    sites = _hex_lattice(spacing, width_um, height_um, margin_um)
    if len(sites) < n:
        raise ValueError(f"only {len(sites)} lattice sites for {n} cells: lower --cells")
    sites = sites[rng.choice(len(sites), size=n, replace=False)]
    sites += rng.uniform(-0.1, 0.1, size=sites.shape) * spacing
    return sites


def _hex_lattice(spacing: float, width_um: float, height_um: float, margin_um: float) -> np.ndarray:
    """(K, 2) sites of a hexagonal lattice of ``spacing`` inside the margins."""
    ys = np.arange(margin_um + spacing / 2, height_um - margin_um, spacing * np.sqrt(3) / 2)
    xs = np.arange(margin_um + spacing / 2, width_um - margin_um, spacing)
    gx, gy = np.meshgrid(xs, ys)
    gx = gx + (np.arange(len(ys))[:, None] % 2) * spacing / 2
    sites = np.column_stack([gx.ravel(), gy.ravel()])
    return sites[(sites[:, 0] < width_um - margin_um) & (sites[:, 1] < height_um - margin_um)]


def _crowded_map(width_um: float, height_um: float, margin_um: float, share: float, rng: np.random.Generator):
    """A function telling which points lie in the crowded regions: blobs of smoothed noise covering ``share`` of
    the area inside the margins."""
    step = CROWDED_REGION_UM / 8
    shape = (int(np.ceil(height_um / step)) + 1, int(np.ceil(width_um / step)) + 1)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), CROWDED_REGION_UM / step)
    gy, gx = (np.arange(k) * step for k in shape)
    inner_rows = (gy >= margin_um) & (gy <= height_um - margin_um)
    inner_cols = (gx >= margin_um) & (gx <= width_um - margin_um)
    threshold = np.quantile(field[np.ix_(inner_rows, inner_cols)], 1 - share) if share < 1 else -np.inf

    def crowded(xy: np.ndarray) -> np.ndarray:
        rows = np.clip(np.round(xy[:, 1] / step).astype(int), 0, shape[0] - 1)
        cols = np.clip(np.round(xy[:, 0] / step).astype(int), 0, shape[1] - 1)
        return field[rows, cols] > threshold

    return crowded


def place_crowded_cells(
    n: int, width_um: float, height_um: float, margin_um: float, crowding: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Nucleus centres as ``place_cells`` gives them, but with a share ``crowding`` of the cells packed into
    crowded regions (patches of a random map) at ``CROWDED_SPACING_UM``, closer than most nuclei's diameters.

    Returns (centres, whether each cell lies in a crowded region). The other cells fill the rest of the slide
    on a lattice of their own, as ``place_cells`` would spread them over the area the crowd leaves.
    """
    if not 0 < crowding <= 1:
        raise ValueError(f"crowding must be a share of the cells in (0, 1], not {crowding}")
    area = (width_um - 2 * margin_um) * (height_um - 2 * margin_um)
    n_crowded = int(round(crowding * n))
    n_sparse = n - n_crowded
    site_area = CROWDED_SPACING_UM**2 * np.sqrt(3) / 2
    crowded_area = LATTICE_SURPLUS * n_crowded * site_area
    sparse_area = area - crowded_area
    if area <= 0 or sparse_area < MIN_AREA_PER_CELL_UM2 * n_sparse or sparse_area < 0:
        max_cells = int(
            max(area, 0) / (crowding * LATTICE_SURPLUS * site_area + (1 - crowding) * MIN_AREA_PER_CELL_UM2)
        )
        raise ValueError(
            f"{n} cells, {crowding:.0%} of them crowded, do not fit in {width_um:.0f} x {height_um:.0f} µm "
            f"(at most {max_cells}): lower --cells, raise --width/--height or raise --crowding"
        )
    in_crowd = _crowded_map(width_um, height_um, margin_um, min(1.0, crowded_area / area), rng)
    dense = _hex_lattice(CROWDED_SPACING_UM, width_um, height_um, margin_um)
    dense = dense[in_crowd(dense)]
    sparse = np.empty((0, 2))
    n_crowded = min(n_crowded, len(dense))
    n_sparse = n - n_crowded
    spacing = max(np.sqrt(sparse_area / (LATTICE_SURPLUS * max(n_sparse, 1)) * 2 / np.sqrt(3)), CROWDED_SPACING_UM)
    # Tighten the sparse lattice until it holds its cells besides the strip along the crowd's edge it leaves.
    while n_sparse:
        sparse = _hex_lattice(spacing, width_um, height_um, margin_um)
        sparse = sparse[~in_crowd(sparse)]
        if len(dense):
            # No sparse site right against the crowd's edge: the two lattices do not interleave.
            gap = cKDTree(dense).query(sparse)[0]
            sparse = sparse[gap > (spacing + CROWDED_SPACING_UM) / 2]
        if len(sparse) >= LATTICE_SURPLUS * n_sparse or spacing <= CROWDED_SPACING_UM:
            break
        spacing = max(spacing * 0.95, CROWDED_SPACING_UM)
    sparse = sparse + rng.uniform(-0.1, 0.1, size=sparse.shape) * spacing
    if len(sparse) < n_sparse:
        raise ValueError(f"only {len(dense) + len(sparse)} lattice sites for {n} cells: lower --cells")
    dense = dense[rng.choice(len(dense), size=n_crowded, replace=False)]
    dense = dense + rng.uniform(-CROWDED_JITTER, CROWDED_JITTER, size=dense.shape) * CROWDED_SPACING_UM
    sparse = sparse[rng.choice(len(sparse), size=n_sparse, replace=False)]
    order = rng.permutation(n)
    return np.concatenate([dense, sparse])[order], (np.arange(n) < n_crowded)[order]


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
    crowded: np.ndarray | None = None,
) -> Population:
    """Nuclear shape and staining per cell, scaled down where neighbours are too close to fit it.

    ``morph_cls`` (e.g. from ``independent_regions``) sets the class each nucleus looks like; by default it is
    the cell's own class, or with ``null`` a random class drawn cell by cell. Single nuclei of ``crowded`` cells
    (from ``place_crowded_cells``) may reach ``CROWDED_REACH`` of the way to their nearest neighbour, far enough
    to overlap it before ``shapes.build_outlines`` cuts both flat where they meet.
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
    reach = NUCLEUS_REACH if crowded is None else np.where(crowded & (n_nuclei == 1), CROWDED_REACH, NUCLEUS_REACH)
    shrink = np.minimum(1.0, reach * nn_dist / extent)
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
