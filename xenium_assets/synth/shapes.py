"""Nucleus and cell polygons of the synthetic tissue, built for all cells at once.

Nuclei are star-shaped outlines (an ellipse with low-order radial harmonics); cells are Xenium-style
nucleus expansions (5 µm) bounded by the Voronoi cell of their nucleus, like the instrument's
segmentation. Both are written with 12 distinct vertices plus the closing one, clockwise in image
coordinates, on the pixel grid, as XOA writes them.

In crowded tissue (``build_outlines(..., crowded=...)``) neighbouring nuclei may overlap as drawn; each
overlapping pair is then cut flat along one shared line, placed in proportion to the two nuclei's radii along
the line between their centres, so both reach it and touch there, as packed nuclei press against each other.
Cells are bounded by the same lines (by the bisector where no crowded pair meets), so every nucleus stays
inside its cell and no two polygons overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from scipy.spatial import cKDTree

from xenium_assets.synth.biology import Population

N_VERTICES = 12
EXPANSION_UM = 5.0
MULTI_OFFSET = 0.7  # second-nucleus centre offset, in semi-major axes
MULTI_SCALE = 0.72  # size of each nucleus of a binucleate cell relative to a single one


@dataclass
class Outlines:
    """Polygon rings (12 distinct vertices, µm) for nuclei and cells."""

    nucleus_xy: np.ndarray  # (M, 12, 2)
    nucleus_cell: np.ndarray  # (M,) row of the owning cell; M = sum of n_nuclei
    cell_xy: np.ndarray  # (N, 12, 2)

    def nucleus_polygons(self) -> np.ndarray:
        return polygons_from_rings(self.nucleus_xy)

    def cell_polygons(self) -> np.ndarray:
        return polygons_from_rings(self.cell_xy)


def polygons_from_rings(rings: np.ndarray) -> np.ndarray:
    """shapely Polygons from (K, V, 2) open rings in one vectorised call."""
    k, v, _ = rings.shape
    return shapely.polygons(shapely.linearrings(rings.reshape(-1, 2), indices=np.repeat(np.arange(k), v)))


def _star_rings(
    centre: np.ndarray, semi_major: np.ndarray, semi_minor: np.ndarray, angle: np.ndarray, harmonics: np.ndarray
) -> np.ndarray:
    """(K, 12, 2) clockwise rings of an ellipse modulated by 2nd and 3rd radial harmonics."""
    theta = -np.linspace(0, 2 * np.pi, N_VERTICES, endpoint=False)[None, :]  # decreasing: clockwise in y-down
    local = theta - angle[:, None]
    r = (
        semi_major[:, None]
        * semi_minor[:, None]
        / np.hypot(semi_minor[:, None] * np.cos(local), semi_major[:, None] * np.sin(local))
    )
    r = r * (
        1
        + harmonics[:, [0]] * np.cos(2 * (theta - harmonics[:, [1]]))
        + harmonics[:, [2]] * np.cos(3 * (theta - harmonics[:, [3]]))
    )
    return np.stack([centre[:, [0]] + r * np.cos(theta), centre[:, [1]] + r * np.sin(theta)], axis=-1)


def nucleus_rings(pop: Population) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rings of every drawn nucleus with their owning cell, and the outline points of each cell.

    Binucleate cells get two smaller nuclei along the major axis. Anucleate cells keep a virtual
    nucleus only to shape their cell outline (segmented by boundary stain, as in XOA >= 2).
    Returns (nucleus rings, nucleus owner, outline points, outline owner), owners ascending.
    """
    single = _star_rings(pop.xy_um, pop.semi_major, pop.semi_minor, pop.angle, pop.harmonics)
    multi = np.flatnonzero(pop.n_nuclei == 2)
    direction = np.column_stack([np.cos(pop.angle[multi]), np.sin(pop.angle[multi])])
    offset = MULTI_OFFSET * pop.semi_major[multi, None] * direction
    pair = [
        _star_rings(
            pop.xy_um[multi] + sign * offset,
            pop.semi_major[multi] * MULTI_SCALE,
            pop.semi_minor[multi] * MULTI_SCALE,
            pop.angle[multi],
            pop.harmonics[multi],
        )
        for sign in (-1, 1)
    ]
    one = np.flatnonzero(pop.n_nuclei == 1)
    owner = np.concatenate([one, multi, multi])
    order = np.argsort(owner, kind="stable")
    nucleus_xy = np.concatenate([single[one], *pair])[order]
    not_multi = np.flatnonzero(pop.n_nuclei != 2)
    outline_owner = np.concatenate([not_multi, multi, multi])
    outline_order = np.argsort(outline_owner, kind="stable")
    outline_xy = np.concatenate([single[not_multi], *pair])[outline_order]
    return nucleus_xy, owner[order], outline_xy, outline_owner[outline_order]


def _ring_radius(rings: np.ndarray, centre: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Distance from ``centre`` to the edge of each star-shaped ring along ``direction`` (unit vectors)."""
    rel = rings - centre[:, None, :]
    angle = np.arctan2(rel[..., 1], rel[..., 0])
    phi = np.arctan2(direction[:, 1], direction[:, 0])
    # The edge the ray crosses: between the vertices on either side of it in angle (the ring is star-shaped).
    turn = np.mod(phi[:, None] - angle, 2 * np.pi)
    a = np.argmin(turn, axis=1)
    b = np.argmin(np.mod(angle - phi[:, None], 2 * np.pi), axis=1)
    rows = np.arange(len(rings))
    p, q = rel[rows, a], rel[rows, b]
    cross_pq = p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0]
    edge = q - p
    cross_de = direction[:, 0] * edge[:, 1] - direction[:, 1] * edge[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        radius = cross_pq / cross_de
    return np.where(np.isfinite(radius) & (radius > 0), radius, np.hypot(p[:, 0], p[:, 1]))


def _pack(
    pop: Population,
    crowded: np.ndarray,
    nucleus_xy: np.ndarray,
    nucleus_cell: np.ndarray,
    reach: np.ndarray,
    seeds: np.ndarray,
    frame: shapely.Polygon,
) -> tuple[np.ndarray, np.ndarray]:
    """(nucleus rings cut where crowded nuclei meet, cell polygons) for crowded tissue (see the module's notes).

    Every pair of cells close enough for their cells to meet gets one dividing line: where both are crowded
    single nuclei, at the share r_i / (r_i + r_j) of the distance from i (r: each nucleus's radius towards
    the other), else the bisector (the other nuclei reach under half-way by ``biology.NUCLEUS_REACH``). A nucleus
    ring is cut by moving each vertex beyond a line back onto it along its ray from the centre: the ring stays
    star-shaped (valid) and, its vertices being inside the convex region its lines bound, so do its edges.
    """
    xy = pop.xy_um
    n = len(pop)
    limit = 2 * (reach + EXPANSION_UM)
    pairs = cKDTree(xy).query_pairs(float(limit.max()), output_type="ndarray")
    i, j = pairs[:, 0], pairs[:, 1]
    delta = xy[j] - xy[i]
    d = np.hypot(delta[:, 0], delta[:, 1])
    keep = (d < reach[i] + reach[j] + 2 * EXPANSION_UM) & (d > 0)
    i, j, delta, d = i[keep], j[keep], delta[keep], d[keep]
    normal = delta / d[:, None]
    single = pop.n_nuclei == 1
    ring_of = np.full(n, -1)
    ring_of[nucleus_cell[single[nucleus_cell]]] = np.flatnonzero(single[nucleus_cell])
    share = np.full(len(d), 0.5)
    both = crowded[i] & crowded[j] & single[i] & single[j]
    if both.any():
        ri = _ring_radius(nucleus_xy[ring_of[i[both]]], xy[i[both]], normal[both])
        rj = _ring_radius(nucleus_xy[ring_of[j[both]]], xy[j[both]], -normal[both])
        share[both] = ri / (ri + rj)
    # Directed lines: cell a keeps the side {p : (p - xy[a]) . normal <= offset}.
    a = np.concatenate([i, j])
    normal = np.concatenate([normal, -normal])
    offset = np.concatenate([share * d, (1 - share) * d])

    rings = nucleus_xy.copy()
    cut = np.flatnonzero(ring_of[a] >= 0)
    if len(cut):
        row = ring_of[a[cut]]
        ones = np.unique(row)  # the rings that may be cut, and each cut's place among them
        row = np.searchsorted(ones, row)
        centre = xy[nucleus_cell[ones]][:, None, :]
        rel = rings[ones] - centre
        radius = np.hypot(rel[..., 0], rel[..., 1])
        unit = rel / radius[..., None]
        cos = np.einsum("pvk,pk->pv", unit[row], normal[cut])
        bound = np.where(cos > 1e-9, offset[cut, None] / np.where(cos > 1e-9, cos, 1.0), np.inf)
        np.minimum.at(radius, row, bound)
        rings[ones] = centre + radius[..., None] * unit

    # Half-planes as rectangles big enough to hold the whole cell (within reach + expansion of its centre),
    # only those that come close enough to cut it.
    near = offset < reach[a] + EXPANSION_UM
    a, normal, offset = a[near], normal[near], offset[near]
    side = (reach[a] + EXPANSION_UM + 1.0)[:, None]
    along = xy[a] + offset[:, None] * normal
    across = np.column_stack([-normal[:, 1], normal[:, 0]]) * side
    back = normal * (side + offset[:, None])
    corners = np.stack([along + across, along - across, along - across - back, along + across - back], axis=1)
    planes = polygons_from_rings(corners)
    cells = shapely.intersection(shapely.buffer(seeds, EXPANSION_UM, quad_segs=4), frame)
    # Nearest lines first; a line beyond the farthest corner of what is left of the cell cuts nothing.
    order = np.lexsort((offset, a))
    a, planes, offset = a[order], planes[order], offset[order]
    first = np.searchsorted(a, np.arange(n))
    rank = np.arange(len(a)) - first[a]
    extent = reach + EXPANSION_UM
    for k in range(int(rank.max()) + 1 if len(a) else 0):
        at = np.flatnonzero((rank == k) & (offset < extent[a]))
        if not len(at):
            break
        hit = a[at]
        cells[hit] = shapely.intersection(cells[hit], planes[at])
        corner, part = shapely.get_coordinates(cells[hit], return_index=True)
        far = np.zeros(len(hit))
        np.maximum.at(far, part, np.hypot(*(corner - xy[hit][part]).T))
        extent[hit] = far
    return rings, cells


def build_outlines(
    pop: Population, width_um: float, height_um: float, pixel_size: float, crowded: np.ndarray | None = None
) -> Outlines:
    """Nucleus rings and Voronoi-bounded nucleus-expansion cell rings, quantised to the pixel grid.

    ``crowded`` (one flag per cell, from ``biology.place_crowded_cells``): crowded nuclei that overlap are cut
    flat where they meet, and cells are bounded by those lines (see the module's notes).
    """
    nucleus_xy, nucleus_cell, outline_xy, outline_owner = nucleus_rings(pop)
    n = len(pop)
    outline = shapely.multipoints(outline_xy.reshape(-1, 2), indices=np.repeat(outline_owner, N_VERTICES))
    seeds = shapely.convex_hull(outline)
    frame = shapely.box(0, 0, width_um, height_um)
    if crowded is None:
        voronoi = shapely.get_parts(
            shapely.voronoi_polygons(shapely.multipoints(pop.xy_um), extend_to=frame, ordered=True)
        )
        cells = shapely.intersection(
            shapely.intersection(voronoi, shapely.buffer(seeds, EXPANSION_UM, quad_segs=4)), frame
        )
    else:
        out = np.hypot(*(outline_xy - pop.xy_um[outline_owner][:, None, :]).transpose(2, 0, 1)).max(axis=1)
        reach = np.zeros(n)
        np.maximum.at(reach, outline_owner, out)
        nucleus_xy, cells = _pack(pop, crowded, nucleus_xy, nucleus_cell, reach, seeds, frame)
    # Resample each (convex) outline at 12 equally spaced arc positions: XOA's 13-row polygons.
    rings = np.repeat(shapely.get_exterior_ring(cells), N_VERTICES)
    frac = np.tile(np.arange(N_VERTICES) / N_VERTICES, n)
    cell_xy = shapely.get_coordinates(shapely.line_interpolate_point(rings, frac, normalized=True)).reshape(
        n, N_VERTICES, 2
    )
    cell_xy = _clockwise(cell_xy)
    return Outlines(
        nucleus_xy=_snap(nucleus_xy, pixel_size),
        nucleus_cell=nucleus_cell,
        cell_xy=_snap(cell_xy, pixel_size),
    )


def touching(outlines: Outlines, n_cells: int, distance: float) -> np.ndarray:
    """Per cell: whether one of its nuclei lies within ``distance`` (µm) of another cell's nucleus."""
    polygons = outlines.nucleus_polygons()
    near = shapely.STRtree(polygons).query(polygons, predicate="dwithin", distance=distance)
    owner = outlines.nucleus_cell
    other = owner[near[0]] != owner[near[1]]
    out = np.zeros(n_cells, dtype=bool)
    out[owner[near[0][other]]] = True
    return out


def _clockwise(rings: np.ndarray) -> np.ndarray:
    """Reverse rings whose shoelace sum is positive, so all are clockwise in image coordinates."""
    x, y = rings[..., 0], rings[..., 1]
    signed = np.sum(x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y, axis=1)
    rings = rings.copy()
    rings[signed > 0] = rings[signed > 0, ::-1]
    return rings


def _snap(rings: np.ndarray, pixel_size: float) -> np.ndarray:
    """Vertices on the pixel grid in float32, as XOA stores them; rings the snap breaks stay unsnapped."""
    snapped = (np.round(rings / pixel_size) * pixel_size).astype(np.float32)
    repeated = np.all(snapped == np.roll(snapped, -1, axis=1), axis=2).any(axis=1)
    ok = shapely.is_valid(polygons_from_rings(snapped.astype(np.float64))) & ~repeated
    return np.where(ok[:, None, None], snapped, rings.astype(np.float32))
