"""A small synthetic Semantic3D (reduced-8) in the exact raw layout, for demos and tests.

``write_demo_semantic3d`` writes ``OUT/<scan>.txt``, one point per line
``x y z intensity r g b`` (metres with 3 decimals, intensity an integer in
-2048..2047, colours 0..255, separated by spaces) and, for training scans,
``OUT/<scan>.labels``, one label per line (0 unlabeled, 1..8). Scan names are
those of the real download, so the stock validation scans and the test
scans (``*-reduced``) are recognised as such.

A scan is a terrestrial laser scan of a street corner seen from a scanner 1.6 m
above the ground at the origin: road and pavement (man-made terrain), grass
(natural terrain), trees (high vegetation), bushes (low vegetation), building
facades with roofs, low walls and poles (hard scape), a few floating points
(scanning artefacts) and cars, plus unlabeled points. Density falls off with
the distance to the scanner and points come in scanner order (by azimuth),
like the real files.
"""
from pathlib import Path

import numpy as np

from .convert import write_label_lines
from ..shapes import sample_box, sample_rect

SCANS = {'train': ('bildstein_station1_xyz_intensity_rgb', 'untermaederbrunnen_station1_xyz_intensity_rgb'),
         'val': ('bildstein_station3_xyz_intensity_rgb',),
         'test': ('MarketplaceFeldkirch_station4_rgb_intensity-reduced',)}
EXTENT = 20.0  # metres from the scanner
SCANNER_HEIGHT = 1.6
# Per label: base colour and base intensity.
LOOK = {0: ((128, 128, 128), -900), 1: ((120, 120, 124), -1200), 2: ((96, 120, 60), -1500),
        3: ((40, 80, 36), -1700), 4: ((70, 110, 50), -1600), 5: ((200, 180, 150), -800),
        6: ((150, 146, 140), -1000), 7: ((230, 230, 250), -300), 8: ((160, 30, 30), -600)}


def sample_ellipsoid(centre, radii, spacing, rng):
    """Points on an ellipsoid surface, about one per ``spacing``^2 of its area."""
    radii = np.asarray(radii, float)
    area = 4 * np.pi * (np.prod(radii) ** (2 / 3))
    n = max(8, int(area / spacing ** 2))
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    return np.asarray(centre) + direction * radii * rng.uniform(0.85, 1.0, (n, 1))


def sample_cylinder(base, radius, height, spacing, rng):
    n = max(8, int(2 * np.pi * radius * height / spacing ** 2))
    angle, z = rng.uniform(0, 2 * np.pi, n), rng.uniform(0, height, n)
    return np.asarray(base) + np.c_[radius * np.cos(angle), radius * np.sin(angle), z]


def scene_parts(spacing, rng):
    """[(label, points [M, 3])] of one street scene, ground at z = -SCANNER_HEIGHT."""
    g, e = -SCANNER_HEIGHT, EXTENT
    parts = []
    ground = sample_rect((-e, -e, g), (2 * e, 0, 0), (0, 2 * e, 0), rng, spacing)
    road = np.abs(ground[:, 1] - rng.uniform(-3, 3)) < 4.0
    far = np.linalg.norm(ground[:, :2], axis=1) > 0.9 * e
    ground[~road, 2] += 0.08 * np.sin(ground[~road, 0]) * np.cos(ground[~road, 1])  # lumpy grass
    parts += [(1, ground[road & ~far]), (2, ground[~road & ~far]), (0, ground[far])]
    side = 1 if rng.uniform() < 0.5 else -1
    for index in range(3):  # facades along one side of the street
        x0, depth = -e + 2 + index * 12, rng.uniform(6, 9)
        y0 = side * 9 if side > 0 else -9 - depth
        height = rng.uniform(7, 14)
        parts.append((5, sample_box((x0, y0, g), (x0 + 10, y0 + depth, g + height), rng, spacing=spacing)))
    for _ in range(int(rng.integers(4, 7))):  # trees on the other side
        x, y = rng.uniform(-e + 2, e - 2), -side * rng.uniform(6, 14)
        height = rng.uniform(4, 8)
        parts.append((3, np.concatenate([
            sample_cylinder((x, y, g), 0.2, height * 0.6, spacing, rng),
            sample_ellipsoid((x, y, g + height * 0.75), (2.0, 2.0, height * 0.3), spacing, rng)])))
    for _ in range(int(rng.integers(5, 9))):
        centre = (rng.uniform(-e + 1, e - 1), -side * rng.uniform(5, 15), g + 0.4)
        parts.append((4, sample_ellipsoid(centre, (0.8, 0.8, 0.5), spacing, rng)))
    for index in range(2):  # a low wall and a row of poles
        x0 = rng.uniform(-e + 2, e - 10)
        parts.append((6, sample_box((x0, -side * 4.5, g), (x0 + 8, -side * 4.2, g + 0.8), rng, spacing=spacing)))
    for x in np.arange(-e + 3, e - 3, 6.0):
        parts.append((6, sample_cylinder((x, side * 4.5, g), 0.08, 3.0, spacing, rng)))
    for _ in range(int(rng.integers(2, 4))):
        x, y = rng.uniform(-e + 3, e - 5), rng.uniform(-2.5, 1.0)
        parts.append((8, sample_box((x, y, g + 0.2), (x + 4.2, y + 1.8, g + 1.5), rng, spacing=spacing)))
    ghosts = rng.uniform((-e, -e, g + 0.5), (e, e, g + 6), (max(20, int(4 / spacing)), 3))
    parts.append((7, ghosts))
    return parts


def keep_probability(xyz):
    """Chance that the scanner samples a point: falls off with the distance to it."""
    distance = np.linalg.norm(xyz, axis=1)
    return np.clip((8.0 / np.maximum(distance, 1e-3)) ** 1.2, 0.2, 1.0)


def scan_points(num_points, rng):
    """``xyz [N, 3]``, ``intensity [N]``, ``rgb [N, 3]``, ``labels [N]`` of one scan of
    ``num_points`` points, in scanner order."""
    guess = 0.1  # sample spacing, scaled so that ~10 % more points than asked are kept
    expected = keep_probability(np.concatenate(
        [p for _, p in scene_parts(guess, np.random.default_rng(0))])).sum()
    parts = scene_parts(guess * np.sqrt(expected / (1.1 * num_points)), rng)
    xyz = np.concatenate([p for _, p in parts])
    labels = np.repeat([label for label, _ in parts], [len(p) for _, p in parts]).astype(np.uint8)
    keep = np.flatnonzero(rng.uniform(size=len(xyz)) < keep_probability(xyz))
    keep = np.sort(rng.choice(keep, min(num_points, len(keep)), replace=False))
    xyz, labels = xyz[keep] + rng.normal(0, 0.005, (len(keep), 3)), labels[keep]
    base = np.array([LOOK[label][0] for label in range(len(LOOK))], dtype=float)
    rgb = np.clip(base[labels] + rng.normal(0, 14, xyz.shape), 0, 255).astype(np.int64)
    intensity = np.array([LOOK[label][1] for label in range(len(LOOK))])[labels]
    intensity = np.clip(intensity + rng.normal(0, 150, len(xyz)) - 20 * np.linalg.norm(xyz, axis=1),
                        -2048, 2047).astype(np.int64)
    azimuth = np.arctan2(xyz[:, 1], xyz[:, 0])
    order = np.lexsort((xyz[:, 2], np.round(azimuth, 3)))  # column by column, bottom up
    return xyz[order], intensity[order], rgb[order], labels[order]


def write_scan(path, xyz, intensity, rgb, chunk_rows=500_000):
    """``path``: lines ``x y z intensity r g b``, as the Semantic3D files."""
    with open(path, 'wb') as f:
        for start in range(0, len(xyz), chunk_rows):
            end = start + chunk_rows
            np.savetxt(f, np.c_[xyz[start:end], intensity[start:end], rgb[start:end]],
                       fmt='%.3f %.3f %.3f %d %d %d %d')


def write_demo_semantic3d(out_dir, seed=0, scans=None, points_per_scan=40_000):
    """Write raw scans into ``out_dir``; returns ``{scan: number of points}``.

    ``scans`` maps split -> names (default SCANS); test scans get no ``.labels``.
    The same seed writes the same files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scans = SCANS if scans is None else scans
    counts = {}
    for split, names in scans.items():
        for name in names:
            rng = np.random.default_rng([seed, len(name), sum(map(ord, name))])
            xyz, intensity, rgb, labels = scan_points(points_per_scan, rng)
            write_scan(out_dir / f'{name}.txt', xyz, intensity, rgb)
            if split != 'test':
                write_label_lines(out_dir / f'{name}.labels', labels)
            counts[name] = len(xyz)
    return counts
