"""Surfaces sampled as a scanner would see them, for the synthetic datasets
of every layout: jittered grids on rectangles and box faces."""
import numpy as np


def sample_rect(origin, u, v, rng, spacing):
    """Points ``[M, 3]`` on the parallelogram ``origin + s u + t v``, s, t in
    [0, 1]: a grid of about ``spacing``, each point jittered inside its cell,
    so the density is even but not a lattice."""
    origin, u, v = (np.asarray(a, dtype=np.float64) for a in (origin, u, v))
    nu = max(1, int(round(np.linalg.norm(u) / spacing)))
    nv = max(1, int(round(np.linalg.norm(v) / spacing)))
    s, t = np.meshgrid(np.arange(nu), np.arange(nv), indexing='ij')
    s = (s.ravel() + rng.uniform(0.15, 0.85, s.size)) / nu
    t = (t.ravel() + rng.uniform(0.15, 0.85, t.size)) / nv
    return origin + s[:, None] * u + t[:, None] * v


def sample_box(lo, hi, rng, spacing, bottom=False):
    """Points ``[M, 3]`` on the faces of the axis-aligned box ``[lo, hi]``;
    the bottom face only with ``bottom`` (it rests on the floor otherwise)."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    dx, dy, dz = np.diag(hi - lo)
    faces = [(lo, dx, dy, True), (lo + dz, dx, dy, False),  # bottom, top
             (lo, dx, dz, False), (lo + dy, dx, dz, False),  # front, back
             (lo, dy, dz, False), (lo + dx, dy, dz, False)]  # left, right
    return np.concatenate([sample_rect(o, u, v, rng, spacing)
                           for o, u, v, is_bottom in faces
                           if bottom or not is_bottom])


def outside_boxes(points, boxes):
    """Mask ``[M]`` of the points outside every axis-aligned box ``(lo, hi)``."""
    keep = np.ones(len(points), dtype=bool)
    for lo, hi in boxes:
        keep &= ~np.all((points >= lo) & (points <= hi), axis=1)
    return keep
