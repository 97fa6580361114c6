"""Nucleus and cell polygons of the synthetic tissue, built for all cells at once.

Nuclei are star-shaped outlines (an ellipse with low-order radial harmonics); cells are Xenium-style
nucleus expansions (5 µm) bounded by the Voronoi cell of their nucleus, like the instrument's
segmentation. Both are written with 12 distinct vertices plus the closing one, clockwise in image
coordinates, on the pixel grid, as XOA writes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely

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


def build_outlines(pop: Population, width_um: float, height_um: float, pixel_size: float) -> Outlines:
    """Nucleus rings and Voronoi-bounded nucleus-expansion cell rings, quantised to the pixel grid."""
    nucleus_xy, nucleus_cell, outline_xy, outline_owner = nucleus_rings(pop)
    n = len(pop)
    outline = shapely.multipoints(outline_xy.reshape(-1, 2), indices=np.repeat(outline_owner, N_VERTICES))
    seeds = shapely.convex_hull(outline)
    frame = shapely.box(0, 0, width_um, height_um)
    voronoi = shapely.get_parts(shapely.voronoi_polygons(shapely.multipoints(pop.xy_um), extend_to=frame, ordered=True))
    cells = shapely.intersection(shapely.intersection(voronoi, shapely.buffer(seeds, EXPANSION_UM, quad_segs=4)), frame)
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
