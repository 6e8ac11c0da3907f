"""Where the spheres of a covering go: planned, not searched.

Open3D-ML's test sampler covers a cloud by choosing, sphere after sphere, the
least covered point as the next centre: a search over the whole cloud per
sphere, in the main thread (an hour for one 1 km LiDAR tile on 2 cores).
Here the centres are known before the first sphere runs: the barycentres of
the occupied cells of a regular 3D grid of spacing radius / sqrt(2). Every
point then lies within radius * sqrt(3/2) / 2 (about 0.61 radius) of its
cell's barycentre, so inside that cell's sphere; neighbouring spheres
overlap, and a point near one sphere's edge is near another's centre. On a
surface (a room's walls, a tile's terrain) each point falls in about six
spheres; on airborne tiles the cells of a column are mostly one or two, so
the layout is in effect 2D there, and 3D where there are walls or trees.
"""
import numpy as np

# Centres on a grid of spacing radius / SPACING_DIVISOR.
SPACING_DIVISOR = np.sqrt(2.0)


def sphere_centres(points, radius):
    """[S, 3] centres of the covering of `points [M, 3]` by spheres of
    `radius`: the barycentre of the points of each occupied grid cell (of
    spacing radius / sqrt 2), in the order of the cells (x, then y, then
    z), so that consecutive spheres are neighbours."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) == 0:
        return np.zeros((0, 3))
    spacing = radius / SPACING_DIVISOR
    cells = np.floor((points - points.min(axis=0)) / spacing).astype(np.int64)
    _, inverse, counts = np.unique(cells, axis=0, return_inverse=True,
                                   return_counts=True)
    inverse = inverse.reshape(-1)
    sums = np.stack([np.bincount(inverse, weights=points[:, axis],
                                 minlength=len(counts)) for axis in range(3)],
                    axis=1)
    return sums / counts[:, None]


def batches_of(sizes, limit, count=None):
    """Consecutive groups of sphere indices whose sizes sum to at most
    `limit` (one sphere alone when it is larger) and, with `count`, of at
    most `count` spheres: the batches of a covering, which KPConv's batcher
    would otherwise cut short."""
    if count is not None and count < 1:
        raise ValueError(f"a batch holds at least one sphere, got {count}")
    groups, current, total = [], [], 0
    for index, size in enumerate(sizes):
        if current and (total + size > limit or len(current) == count):
            groups.append(current)
            current, total = [], 0
        current.append(index)
        total += size
    if current:
        groups.append(current)
    return groups
