"""Synthetic airborne LiDAR tiles (LAS/LAZ), like IGN LiDAR HD's, for tests
and benchmarks at real sizes (tens of millions of points).

``write_synthetic_tile`` writes one classified tile: ground (ASPRS code 2)
on a smooth terrain, buildings (6: boxes with flat or gabled roofs, their
walls sparse as seen from the air), trees and shrubs (3/4/5 low, medium,
high vegetation by height above the ground, below 0.5 m, 1.5 m and above:
crowns are ellipsoids that give up to 5 returns per pulse, the last often
on the ground), cars and ground clutter (1 unclassified), grass in fields
(3) and a few noise points (7, high birds and low multipath).

The scene is a function of world coordinates and the seed: it is built on
a grid of 40 m lots (each urban: a building, parked cars, a tree; forest;
or field) whose contents come from the lot's own random stream, so that
adjacent tiles of one seed join without a seam. A tile is a window on it.

Points come in acquisition order, as in a real file: one flight line along
y, scan lines across x sweeping back and forth (``scan_direction_flag``),
``gps_time`` increasing (adjusted standard GPS time, one value per pulse
shared by its returns), returns of a pulse consecutive from the highest.
The pulse density is planned from the number of points asked and the
extent; the returns per pulse are estimated on the scene, and a second
pass (``point_source_id`` 2) covers the start of the tile again until
exactly ``num_points`` are written (about 2 % of them), as the overlap
of a neighbouring flight line would.

Streaming: pulses are generated in fixed blocks of ``PULSES_PER_BLOCK``
(each from its own random stream, keyed by seed, tile and block index) and
copied into chunks of ``chunk_points`` that are written one by one, so the
memory does not grow with the tile and the file is the same whatever
``chunk_points``. Colour uses streams of its own: a tile with and without
colour has the same points.
"""
import argparse
import math
import time
from datetime import date
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..atomic import atomic_path

DEFAULT_EXTENT = (770000.0, 6277000.0, 771000.0, 6278000.0)  # Lambert-93, 1 km
SCALE = 0.01  # metres, as IGN LiDAR HD
GPS_FORMATS = (1, 3, 6, 7, 8)  # the point formats with gps_time, no waveform
COLOUR_FORMATS = (3, 7, 8)
CREATION_DATE = date(2024, 1, 1)  # fixed: the same arguments give the same bytes
GENERATING_SOFTWARE = 'ncm_plugin synthetic tile'
# RGF93 v1 / Lambert-93 (EPSG:2154), as IGN LiDAR HD's WKT VLR writes it.
LAMBERT93_WKT = (
    'PROJCS["RGF93 v1 / Lambert-93",GEOGCS["RGF93 v1",DATUM["Reseau_Geodesique_'
    'Francais_1993_v1",SPHEROID["GRS 1980",6378137,298.257222101,AUTHORITY['
    '"EPSG","7019"]],AUTHORITY["EPSG","6171"]],PRIMEM["Greenwich",0,AUTHORITY['
    '"EPSG","8901"]],UNIT["degree",0.0174532925199433,AUTHORITY["EPSG","9122"]],'
    'AUTHORITY["EPSG","4171"]],PROJECTION["Lambert_Conformal_Conic_2SP"],'
    'PARAMETER["latitude_of_origin",46.5],PARAMETER["central_meridian",3],'
    'PARAMETER["standard_parallel_1",49],PARAMETER["standard_parallel_2",44],'
    'PARAMETER["false_easting",700000],PARAMETER["false_northing",6600000],'
    'UNIT["metre",1,AUTHORITY["EPSG","9001"]],AXIS["Easting",EAST],'
    'AXIS["Northing",NORTH],AUTHORITY["EPSG","2154"]]')

PULSES_PER_BLOCK = 1 << 16
LOT = 40.0  # metres: the scene's grid of lots
URBAN, FOREST, FIELD = 0, 1, 2
MAX_CELLS = 4_000_000  # lookup rasters of the scene: at most ~32 MB
WALL_BAND = 0.12  # metres outside a footprint where a pulse hits the wall
ROOF_EDGE = 0.3  # metres inside a roof edge where a pulse may split
FLIGHT_HEIGHT = 1200.0  # metres above the terrain (for the scan angle)
SPEED = 60.0  # m/s along the flight line
TURN = 420.0  # seconds between two passes
COVERAGE = 0.98  # share of the points planned for the first pass
NOISE_FRACTION = 5e-4  # pulses that give a noise point (7)
CLUTTER_FRACTION = 0.01  # ground pulses on unclassified clutter (1)
GRASS_FRACTION = 0.15  # ground pulses of a field on grass (3)
VEG = 0  # classification placeholder: vegetation, classed by height
# Returns per pulse in a crown: P(1..5 returns), trees and shrubs.
TREE_RETURNS = np.cumsum([0.30, 0.30, 0.22, 0.12, 0.06])
SHRUB_RETURNS = np.cumsum([0.55, 0.30, 0.15, 0.0, 0.0])
# Intensity (uint16) per class: mean, standard deviation of a single return,
# near IGN LiDAR HD's (medians ~1000-1250, 5-95 % ~300-1500).
INTENSITY = {1: (900, 300), 2: (1150, 250), 3: (1050, 250), 4: (1000, 250),
             5: (1000, 280), 6: (1250, 220), 7: (400, 250)}
COLOUR = {1: (110, 110, 115), 2: (125, 118, 100), 3: (95, 125, 60),
          4: (70, 105, 50), 5: (55, 90, 45), 7: (200, 200, 205)}
ROOF_COLOURS = np.array([(165, 80, 60), (120, 120, 125), (70, 70, 78),
                         (185, 110, 80)], dtype=np.float64)
WALL_COLOUR = (190, 180, 165)
# Tags of the random streams (with the seed): scene, lot, pulses, colour.
_SCENE, _LOT, _PULSES, _COLOUR, _ESTIMATE = 11, 12, 13, 14, 15


class Scene(NamedTuple):
    """The objects of the world around one tile and rasters to find them.

    terrain [K, 4]: waves (kx, ky, amplitude, phase) above `base` metres.
    boxes [B, 12]: buildings and cars (see BOX_FIELDS), trees [T, 6]
    (see TREE_FIELDS); box_id / tree_id [H, W] int32 hold, per cell of side
    `cell` from `raster_origin`, the object whose footprint (dilated by a
    cell) covers it, -1 for none (the tallest tree where crowns overlap).
    lot_type [I, J] by lot index from `lot_origin` (integer lot indices).
    """
    base: float
    terrain: np.ndarray
    boxes: np.ndarray
    trees: np.ndarray
    box_id: np.ndarray
    tree_id: np.ndarray
    raster_origin: np.ndarray
    cell: float
    lot_type: np.ndarray
    lot_origin: np.ndarray


BOX_FIELDS = ('cx', 'cy', 'cos', 'sin', 'hx', 'hy', 'base', 'eave', 'ridge',
              'code', 'walls', 'colour')
TREE_FIELDS = ('cx', 'cy', 'radius', 'top', 'bottom', 'shrub')
_B = {name: i for i, name in enumerate(BOX_FIELDS)}
_T = {name: i for i, name in enumerate(TREE_FIELDS)}


def _stream(*key):
    return np.random.default_rng([int(k) & 0xFFFF_FFFF_FFFF for k in key])


def terrain_z(scene, x, y):
    """Ground heights [N] at world coordinates x, y [N]: a few long waves
    (200-900 m, metres high) on the tile's base altitude."""
    z = np.full(np.shape(x), scene.base)
    for kx, ky, amplitude, phase in scene.terrain:
        z += amplitude * np.sin(kx * x + ky * y + phase)
    return z


def _lot_kind(seed, ci, cj, rng):
    """URBAN, FOREST or FIELD of the lot with centre (ci, cj): a smooth
    world field (zones of a few hundred metres) plus the lot's own noise."""
    field = _stream(seed, _SCENE, 1)
    value = rng.uniform(-0.45, 0.45)
    for _ in range(3):
        k = 2 * np.pi / field.uniform(250, 600)
        angle, phase = field.uniform(0, 2 * np.pi, 2)
        value += np.sin(k * (ci * np.cos(angle) + cj * np.sin(angle)) + phase) / 3
    return URBAN if value < -0.12 else FOREST if value > 0.2 else FIELD


def _lot_objects(seed, i, j, ground):
    """(boxes, trees) rows of lot (i, j), from its own random stream."""
    rng = _stream(seed, _LOT, i, j)
    x0, y0 = i * LOT, j * LOT
    kind = _lot_kind(seed, x0 + LOT / 2, y0 + LOT / 2, rng)
    boxes, trees = [], []
    if kind == URBAN:
        # One building in the lot's interior (4.5 m margins keep the car
        # strips along the south and west edges free).
        hx, hy = rng.uniform(4, 13), rng.uniform(3.5, 8)
        hx, hy = max(hx, hy), min(hx, hy)
        angle = rng.uniform(-0.4, 0.4) + (np.pi / 2 if rng.uniform() < 0.3 else 0)
        c, s = np.cos(angle), np.sin(angle)
        ex, ey = hx * abs(c) + hy * abs(s), hx * abs(s) + hy * abs(c)
        room = LOT / 2 - 4.5
        shrink = min(1.0, room / ex, room / ey)
        hx, hy, ex, ey = hx * shrink, hy * shrink, ex * shrink, ey * shrink
        cx = x0 + LOT / 2 + rng.uniform(-1, 1) * (room - ex)
        cy = y0 + LOT / 2 + rng.uniform(-1, 1) * (room - ey)
        tall = rng.uniform() < 0.1
        eave = rng.uniform(10, 25) if tall else rng.uniform(3, 9)
        ridge = 0.0 if tall or rng.uniform() < 0.4 else \
            hy * np.tan(np.radians(rng.uniform(25, 45)))
        base = float(ground(np.array([cx]), np.array([cy]))[0])
        boxes.append((cx, cy, c, s, hx, hy, base, eave, ridge, 6, 1,
                      rng.integers(len(ROOF_COLOURS))))
        for edge in range(2):  # parked cars, one slot every 6 m
            for slot in np.flatnonzero(rng.uniform(size=6) < 0.3):
                along, across = 5.0 + 6.0 * slot, rng.uniform(1.2, 2.6)
                cx, cy = (x0 + along, y0 + across) if edge == 0 else \
                    (x0 + across, y0 + along)
                base = float(ground(np.array([cx]), np.array([cy]))[0])
                c, s = (1.0, 0.0) if edge == 0 else (0.0, 1.0)
                boxes.append((cx, cy, c, s, 2.2, 0.9, base, 1.5, 0.0, 1, 0,
                              rng.integers(len(ROOF_COLOURS))))
        if rng.uniform() < 0.5:
            top = rng.uniform(5, 12)
            trees.append((x0 + rng.uniform(36, 38.5), y0 + rng.uniform(36, 38.5),
                          rng.uniform(1.5, 3.0), top, top * rng.uniform(0.3, 0.5), 0))
    elif kind == FOREST:
        spacing = 6.5
        n = int(LOT / spacing)
        gx, gy = np.meshgrid((np.arange(n) + 0.5) * LOT / n,
                             (np.arange(n) + 0.5) * LOT / n)
        count = gx.size
        top = rng.uniform(8, 25, count)
        trees += zip(x0 + gx.ravel() + rng.uniform(-1.5, 1.5, count),
                     y0 + gy.ravel() + rng.uniform(-1.5, 1.5, count),
                     rng.uniform(2.0, 4.2, count), top,
                     top * rng.uniform(0.3, 0.6, count), np.zeros(count))
        count = 8
        trees += zip(x0 + rng.uniform(0, LOT, count), y0 + rng.uniform(0, LOT, count),
                     rng.uniform(0.6, 1.5, count), rng.uniform(0.6, 3.0, count),
                     np.zeros(count), np.ones(count))
    else:
        count = int(rng.integers(0, 4))
        trees += zip(x0 + rng.uniform(0, LOT, count), y0 + rng.uniform(0, LOT, count),
                     rng.uniform(0.6, 1.8, count), rng.uniform(0.6, 3.0, count),
                     np.zeros(count), np.ones(count))
    return kind, boxes, trees


def build_scene(seed, extent):
    """The Scene around `extent` (xmin, ymin, xmax, ymax): every lot within
    a lot of it, its objects set on the terrain."""
    rng = _stream(seed, _SCENE, 0)
    base = rng.uniform(80, 400)
    waves = []
    for amplitude in rng.uniform(0.5, 4.0, 4):
        k = 2 * np.pi / rng.uniform(200, 900)
        angle = rng.uniform(0, 2 * np.pi)
        waves.append((k * np.cos(angle), k * np.sin(angle), amplitude,
                      rng.uniform(0, 2 * np.pi)))
    partial = Scene(base, np.array(waves), *([None] * 8))

    def ground(x, y):
        return terrain_z(partial, x, y)

    x0, y0, x1, y1 = extent
    lots_i = np.arange(math.floor(x0 / LOT) - 1, math.ceil(x1 / LOT) + 1)
    lots_j = np.arange(math.floor(y0 / LOT) - 1, math.ceil(y1 / LOT) + 1)
    lot_type = np.zeros((len(lots_i), len(lots_j)), dtype=np.int8)
    boxes, trees = [], []
    for a, i in enumerate(lots_i):
        for b, j in enumerate(lots_j):
            lot_type[a, b], lot_boxes, lot_trees = _lot_objects(seed, i, j, ground)
            boxes += lot_boxes
            trees += lot_trees
    boxes = np.array(boxes, dtype=np.float64).reshape(-1, len(BOX_FIELDS))
    trees = np.array(trees, dtype=np.float64).reshape(-1, len(TREE_FIELDS))
    centres = trees[:, :2]
    trees[:, _T['top']] += ground(centres[:, 0], centres[:, 1])
    trees[:, _T['bottom']] += ground(centres[:, 0], centres[:, 1])
    trees = trees[np.argsort(trees[:, _T['top']], kind='stable')]

    origin = np.array([lots_i[0] * LOT, lots_j[0] * LOT])
    size = np.array([len(lots_i), len(lots_j)]) * LOT
    cell = max(1.0, math.sqrt(size[0] * size[1] / MAX_CELLS))
    shape = (int(math.ceil(size[1] / cell)), int(math.ceil(size[0] / cell)))
    return Scene(base, partial.terrain, boxes, trees,
                 _paint_boxes(boxes, shape, origin, cell),
                 _paint_trees(trees, shape, origin, cell), origin, cell,
                 lot_type, np.array([lots_i[0], lots_j[0]]))


def _paint_boxes(boxes, shape, origin, cell):
    """[H, W] index of the box whose footprint, dilated by the wall band
    and a cell's half diagonal, covers each cell centre (boxes do not
    overlap: one building per lot, cars in their own strips)."""
    raster = np.full(shape, -1, dtype=np.int32)
    pad = WALL_BAND + cell * 0.71
    for index, (cx, cy, c, s, hx, hy) in enumerate(boxes[:, :6]):
        reach = hx + hy + pad
        cols, rows, ux, uy = _cells_near(cx, cy, reach, shape, origin, cell)
        u, v = ux * c + uy * s, -ux * s + uy * c
        inside = (np.abs(u) <= hx + pad) & (np.abs(v) <= hy + pad)
        raster[rows, cols][inside] = index  # basic slices: a view
    return raster


def _paint_trees(trees, shape, origin, cell):
    """[H, W] index of the tree whose crown, dilated by a cell's half
    diagonal, covers each cell centre; painted from the lowest tree up, so
    the tallest wins where crowns overlap."""
    raster = np.full(shape, -1, dtype=np.int32)
    for index, (cx, cy, radius) in enumerate(trees[:, :3]):
        reach = radius + cell * 0.71
        cols, rows, ux, uy = _cells_near(cx, cy, reach, shape, origin, cell)
        raster[rows, cols][ux ** 2 + uy ** 2 <= reach ** 2] = index
    return raster


def _cells_near(cx, cy, reach, shape, origin, cell):
    """Slices of the cells within `reach` of (cx, cy) on each axis and the
    offsets of their centres from it ([h, 1] and [1, w])."""
    c0 = max(0, int((cx - reach - origin[0]) / cell))
    c1 = min(shape[1], int((cx + reach - origin[0]) / cell) + 1)
    r0 = max(0, int((cy - reach - origin[1]) / cell))
    r1 = min(shape[0], int((cy + reach - origin[1]) / cell) + 1)
    ux = origin[0] + (np.arange(c0, c1) + 0.5) * cell - cx
    uy = origin[1] + (np.arange(r0, r1) + 0.5) * cell - cy
    return slice(c0, c1), slice(r0, r1), ux[None, :], uy[:, None]


class Returns(NamedTuple):
    """The points of a set of pulses, pulse by pulse, highest return first:
    pulse [M] (index of its pulse), z [M], code [M] (ASPRS), return_number,
    number_of_returns [M] (1..5), box [M] (its box, -1 for none)."""
    pulse: np.ndarray
    z: np.ndarray
    code: np.ndarray
    return_number: np.ndarray
    number_of_returns: np.ndarray
    box: np.ndarray


def pulse_returns(scene, x, y, rng):
    """Returns of pulses at world x, y [N] (nadir: every return of a pulse
    keeps its x, y). Each pulse hits, in this order of precedence: noise,
    a box (roof; or the wall in a thin band outside it), a crown, the
    ground (sometimes grass or clutter)."""
    n = len(x)
    g = terrain_z(scene, x, y)
    col = np.clip(((x - scene.raster_origin[0]) / scene.cell).astype(np.int64),
                  0, scene.box_id.shape[1] - 1)
    row = np.clip(((y - scene.raster_origin[1]) / scene.cell).astype(np.int64),
                  0, scene.box_id.shape[0] - 1)
    # Per pulse: height of the first return, lowest height of the others,
    # class of the first ones, returns, and where the last one ends.
    z_first = g + rng.normal(0, 0.03, n)
    z_low = g.copy()
    code = np.full(n, 2, dtype=np.int64)
    count = np.ones(n, dtype=np.int64)
    last_ground = np.zeros(n, dtype=bool)
    understory = np.zeros(n, dtype=bool)
    box = np.full(n, -1, dtype=np.int64)
    free = np.ones(n, dtype=bool)

    candidate = scene.box_id[row, col]
    hit = np.flatnonzero(candidate >= 0)
    if len(hit):
        b = scene.boxes[candidate[hit]]
        dx, dy = x[hit] - b[:, _B['cx']], y[hit] - b[:, _B['cy']]
        u = np.abs(dx * b[:, _B['cos']] + dy * b[:, _B['sin']])
        v = np.abs(-dx * b[:, _B['sin']] + dy * b[:, _B['cos']])
        hx, hy = b[:, _B['hx']], b[:, _B['hy']]
        eave = b[:, _B['base']] + b[:, _B['eave']]
        roof = (u < hx) & (v < hy)
        wall = ~roof & (b[:, _B['walls']] > 0) & (u < hx + WALL_BAND) & \
            (v < hy + WALL_BAND)
        on = hit[roof]
        z_first[on] = (eave + b[:, _B['ridge']] * (1 - v / hy))[roof] + \
            rng.normal(0, 0.03, len(on))
        code[on] = b[roof, _B['code']]
        edge = roof & (b[:, _B['code']] == 6) & \
            (np.minimum(hx - u, hy - v) < ROOF_EDGE) & \
            (rng.uniform(size=len(hit)) < 0.5)
        count[hit[edge]] = 2
        last_ground[hit[edge]] = True
        on_wall = hit[wall]
        z_first[on_wall] = rng.uniform(g[on_wall] + 0.2, eave[wall])
        code[on_wall] = 6
        box[hit[roof | wall]] = candidate[hit[roof | wall]]
        free[hit[roof | wall]] = False

    candidate = scene.tree_id[row, col]
    hit = np.flatnonzero(free & (candidate >= 0))
    if len(hit):
        t = scene.trees[candidate[hit]]
        r2 = ((x[hit] - t[:, _T['cx']]) ** 2 + (y[hit] - t[:, _T['cy']]) ** 2) / \
            t[:, _T['radius']] ** 2
        crown = r2 < 1
        hit, t, r2 = hit[crown], t[crown], r2[crown]
        shrub = t[:, _T['shrub']] > 0
        half = (t[:, _T['top']] - t[:, _T['bottom']]) / 2
        middle = t[:, _T['bottom']] + half
        depth = half * np.sqrt(1 - r2)
        surface = middle + depth
        z_first[hit] = surface - rng.uniform(0, 0.15, len(hit)) * half
        z_low[hit] = np.minimum(np.maximum(middle - depth, g[hit] + 0.05),
                                z_first[hit])
        draw = rng.uniform(size=len(hit))
        count[hit] = 1 + np.where(shrub, np.searchsorted(SHRUB_RETURNS, draw),
                                  np.searchsorted(TREE_RETURNS, draw))
        end = rng.uniform(size=len(hit))
        multiple = count[hit] > 1
        last_ground[hit] = multiple & (end < np.where(shrub, 0.7, 0.5))
        understory[hit] = multiple & ~shrub & (end >= 0.5) & (end < 0.7)
        code[hit] = VEG
        free[hit] = False

    ground = np.flatnonzero(free)
    lot = _lot_kind_at(scene, x[ground], y[ground])
    draw = rng.uniform(size=len(ground))
    grass = ground[(lot == FIELD) & (draw < GRASS_FRACTION)]
    code[grass] = 3
    z_first[grass] = g[grass] + rng.uniform(0.05, 0.45, len(grass))
    clutter = ground[draw > 1 - CLUTTER_FRACTION]
    code[clutter] = 1
    z_first[clutter] = g[clutter] + rng.uniform(0.1, 2.0, len(clutter))

    noise = np.flatnonzero(rng.uniform(size=n) < NOISE_FRACTION)
    high = rng.uniform(size=len(noise)) < 0.5
    z_first[noise] = g[noise] + np.where(high, rng.uniform(20, 250, len(noise)),
                                         -rng.uniform(0.5, 10, len(noise)))
    code[noise], count[noise], box[noise] = 7, 1, -1
    last_ground[noise] = understory[noise] = False

    return _expand(z_first, z_low, g, code, count, last_ground, understory,
                   box, rng)


def _expand(z_first, z_low, g, code, count, last_ground, understory, box, rng):
    """Returns of pulses from their per-pulse description: return k of n
    (k > 1) at a stratified depth between z_first and z_low <= z_first
    (so heights fall with k), the last on the ground or in the understory
    if so marked; vegetation classed by height above the ground."""
    pulse = np.repeat(np.arange(len(count)), count)
    starts = np.cumsum(count) - count
    k = np.arange(len(pulse)) - starts[pulse] + 1
    n = count[pulse]
    fraction = np.where(k > 1, (k - 1 + rng.uniform(size=len(pulse))) / n, 0.0)
    z = z_first[pulse] - (z_first[pulse] - z_low[pulse]) * fraction
    points_code = code[pulse]
    last = (k == n) & (k > 1)
    on_ground = last & last_ground[pulse]
    z[on_ground] = g[pulse[on_ground]] + rng.normal(0, 0.03, on_ground.sum())
    points_code[on_ground] = 2
    low = last & understory[pulse]
    z[low] = g[pulse[low]] + rng.uniform(0.05, 1.6, low.sum())
    # The last return below the one before it (the others fall with k).
    below = np.flatnonzero(last)
    z[below] = np.minimum(z[below], z[below - 1])
    veg = points_code == VEG
    height = z[veg] - g[pulse[veg]]
    points_code[veg] = np.where(height < 0.5, 3, np.where(height < 1.5, 4, 5))
    points_box = np.where(on_ground, -1, box[pulse])
    return Returns(pulse, z, points_code, k, n, points_box)


def _lot_kind_at(scene, x, y):
    """Kind of the lot (URBAN, FOREST, FIELD) under each x, y [N]."""
    i = np.clip(np.floor(x / LOT).astype(np.int64) - scene.lot_origin[0],
                0, scene.lot_type.shape[0] - 1)
    j = np.clip(np.floor(y / LOT).astype(np.int64) - scene.lot_origin[1],
                0, scene.lot_type.shape[1] - 1)
    return scene.lot_type[i, j]


class Layout(NamedTuple):
    """The scan pattern: `lines` scan lines of `per_line` pulses per pass
    over the extent; pass p starts at gps time t0 + p * (duration + TURN)."""
    extent: tuple
    per_line: int
    lines: int
    t0: float
    duration: float

    @property
    def pulses(self):
        return self.per_line * self.lines


def plan_layout(scene, num_points, extent, seed):
    """Scan lines for num_points on the extent: the returns per pulse are
    estimated on 32768 random pulses of the scene; the first pass is
    planned for COVERAGE of the points, the rest repeats the start."""
    x0, y0, x1, y1 = extent
    rng = _stream(seed, _ESTIMATE)
    probe = 1 << 15
    returns = pulse_returns(scene, rng.uniform(x0, x1, probe),
                            rng.uniform(y0, y1, probe), rng)
    per_pulse = len(returns.pulse) / probe
    pulses = max(1.0, num_points * COVERAGE / per_pulse)
    per_line = max(1, round(math.sqrt(pulses * (x1 - x0) / (y1 - y0))))
    lines = max(1, round(pulses / per_line))
    t0 = 3.0e8 + rng.uniform(0, 1e8)  # adjusted standard GPS time, 2014-2020
    return Layout(tuple(extent), per_line, lines, t0, (y1 - y0) / SPEED)


def scan_pulses(layout, first, count, rng):
    """Pulses first .. first + count - 1 in acquisition order: x, y [count]
    (jittered around a zigzag scan pattern, inside the extent), gps_time,
    scan angle (degrees), scan direction (0/1), edge of the flight line
    (0/1), pass (0, 1, ...)."""
    x0, y0, x1, y1 = layout.extent
    index = first + np.arange(count, dtype=np.int64)
    flight, q = np.divmod(index, layout.pulses)
    line, step = np.divmod(q, layout.per_line)
    forward = line % 2 == 0
    position = np.where(forward, step, layout.per_line - 1 - step)
    spacing = (x1 - x0) / layout.per_line
    x = x0 + (position + 0.5 + 0.5 * (flight % 2) +
              rng.uniform(-0.35, 0.35, count)) * spacing
    x = np.where(x >= x1, x - (x1 - x0), x)
    y = y0 + (line + (step + 0.5) / layout.per_line +
              rng.uniform(-0.2, 0.2, count)) * (y1 - y0) / layout.lines
    x = np.clip(x, x0, x1 - SCALE)  # stays inside once rounded to SCALE
    y = np.clip(y, y0, y1 - SCALE)
    gps = layout.t0 + flight * (layout.duration + TURN) + \
        q * (layout.duration / layout.pulses)
    angle = np.degrees(np.arctan((x - (x0 + x1) / 2) / FLIGHT_HEIGHT))
    edge = (step == 0) | (step == layout.per_line - 1)
    return x, y, gps, angle, forward.astype(np.uint8), edge.astype(np.uint8), flight


def make_header(point_format, extent, crs_wkt=None):
    """A LAS header as IGN LiDAR HD's: LAS 1.4 for point formats 6-8 (1.2
    for 1 and 3), scales of SCALE, offsets the extent's corner rounded
    down to a kilometre, adjusted standard GPS time, a fixed creation date,
    the CRS as a WKT VLR if given (formats 6-8 only)."""
    import laspy
    version = '1.4' if point_format >= 6 else '1.2'
    header = laspy.LasHeader(point_format=point_format, version=version)
    header.scales = np.array([SCALE] * 3)
    header.offsets = np.array([math.floor(extent[0] / 1000) * 1000.0,
                               math.floor(extent[1] / 1000) * 1000.0, 0.0])
    header.system_identifier = 'SYNTHETIC'
    header.generating_software = GENERATING_SOFTWARE
    header.creation_date = CREATION_DATE
    header.global_encoding.gps_time_type = laspy.header.GpsTimeType.STANDARD
    header.global_encoding.wkt = point_format >= 6  # LAS 1.4 requires it for 6-10
    if crs_wkt is not None:
        header.vlrs.append(laspy.vlrs.known.WktCoordinateSystemVlr(crs_wkt))
    return header


def tile_blocks(header, num_points, seed=0, extent=DEFAULT_EXTENT,
                colour=False):
    """laspy point records of the tile, block after block (the blocks of
    PULSES_PER_BLOCK pulses, the last cut at num_points)."""
    import laspy
    extent = tuple(float(v) for v in extent)
    scene = build_scene(seed, extent)
    layout = plan_layout(scene, num_points, extent, seed)
    offsets, scales = header.offsets, header.scales
    names = set(header.point_format.dimension_names)
    tile_key = (round(extent[0] * 100), round(extent[1] * 100))
    written, block = 0, 0
    while written < num_points:
        rng = _stream(seed, _PULSES, *tile_key, block)
        x, y, gps, angle, direction, edge, flight = scan_pulses(
            layout, block * PULSES_PER_BLOCK, PULSES_PER_BLOCK, rng)
        points = pulse_returns(scene, x, y, rng)
        keep = min(len(points.pulse), num_points - written)
        points = Returns(*(field[:keep] for field in points))
        p = points.pulse
        record = laspy.ScaleAwarePointRecord.zeros(keep, header=header)
        record['X'] = np.round((x[p] - offsets[0]) / scales[0]).astype(np.int32)
        record['Y'] = np.round((y[p] - offsets[1]) / scales[1]).astype(np.int32)
        record['Z'] = np.round((points.z - offsets[2]) / scales[2]).astype(np.int32)
        record['intensity'] = _intensity(points, _stream(seed, _PULSES, *tile_key,
                                                         block, 1))
        record.return_number = points.return_number
        record.number_of_returns = points.number_of_returns
        record.classification = points.code
        record.scan_direction_flag = direction[p]
        record.edge_of_flight_line = edge[p]
        if 'scan_angle' in names:  # formats 6+: units of 0.006 degree
            record['scan_angle'] = np.round(angle[p] / 0.006).astype(np.int16)
        else:
            record['scan_angle_rank'] = np.round(angle[p]).astype(np.int8)
        record['point_source_id'] = (flight[p] + 1).astype(np.uint16)
        record['gps_time'] = gps[p]
        if colour:
            _colour(record, scene, points, names,
                    _stream(seed, _COLOUR, *tile_key, block))
        written += keep
        block += 1
        yield record


def _intensity(points, rng):
    """uint16 intensity [M]: the class's level, a share of it for the
    returns of a split pulse (first 0.8, later 0.55)."""
    mean = np.zeros(256)
    std = np.zeros(256)
    for code, (m, s) in INTENSITY.items():
        mean[code], std[code] = m, s
    value = rng.normal(mean[points.code], std[points.code])
    share = np.where(points.number_of_returns == 1, 1.0,
                     np.where(points.return_number == 1, 0.8, 0.55))
    return np.clip(np.round(value * share), 10, 4000).astype(np.uint16)


def _colour(record, scene, points, names, rng):
    """16-bit RGB by class (roofs by building), NIR for format 8 (high on
    vegetation)."""
    base = np.zeros((256, 3))
    for code, rgb in COLOUR.items():
        base[code] = rgb
    rgb = base[points.code]
    on_box = points.box >= 0
    boxes = scene.boxes[points.box[on_box]]
    roof_colour = ROOF_COLOURS[boxes[:, _B['colour']].astype(np.int64)]
    wall = (points.code[on_box] == 6) & (points.z[on_box] < boxes[:, _B['base']] +
                                         boxes[:, _B['eave']] - 0.05)
    rgb[on_box] = np.where(wall[:, None], WALL_COLOUR, roof_colour)
    rgb = np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255) * 257
    rgb = np.round(rgb).astype(np.uint16)
    record.red, record.green, record.blue = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    if 'nir' in names:
        vegetation = (points.code >= 3) & (points.code <= 5)
        nir = np.where(vegetation, 45000, 18000) + rng.normal(0, 3000, len(rgb))
        record['nir'] = np.clip(np.round(nir), 0, 65535).astype(np.uint16)


def _check(path, num_points, extent, point_format, colour, chunk_points, crs_wkt):
    if Path(path).suffix.lower() not in ('.las', '.laz'):
        raise ValueError(f"{path}: the tile's name must end in .las or .laz")
    if not isinstance(num_points, (int, np.integer)) or num_points < 1:
        raise ValueError(f"num_points must be a positive integer, got {num_points!r}")
    if not isinstance(chunk_points, (int, np.integer)) or chunk_points < 1:
        raise ValueError(f"chunk_points must be a positive integer, got {chunk_points!r}")
    x0, y0, x1, y1 = extent
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"extent must be (xmin, ymin, xmax, ymax) with xmax > xmin "
                         f"and ymax > ymin, got {tuple(extent)}")
    if max(x1 - x0, y1 - y0) > 20_000 or min(x0, y0) < 0:
        raise ValueError(f"extent {tuple(extent)}: a tile spans at most 20 km, "
                         f"at non-negative coordinates (Lambert-93, UTM)")
    if point_format not in GPS_FORMATS:
        raise ValueError(f"point_format {point_format!r}: choose one of "
                         f"{GPS_FORMATS} (the formats with gps_time)")
    if colour and point_format not in COLOUR_FORMATS:
        raise ValueError(f"point_format {point_format} has no colour: with "
                         f"colour=True choose one of {COLOUR_FORMATS}")
    if crs_wkt is not None and point_format < 6:
        raise ValueError("crs_wkt needs point format 6, 7 or 8 (LAS 1.4)")


def write_synthetic_tile(path, num_points, seed=0, extent=DEFAULT_EXTENT,
                         point_format=6, colour=False,
                         chunk_points=1_000_000, crs_wkt=None, progress=False):
    """Write a synthetic classified tile of exactly `num_points` points to
    `path` (.las, or .laz compressed by laspy's lazrs backend); returns
    the path.

    extent: (xmin, ymin, xmax, ymax) in metres, by default the 1 km IGN
    tile at Lambert-93 (770000, 6277000); the density is num_points over
    its area (IGN LiDAR HD: ~10-30 points/m2, i.e. 10-30 million a tile).
    point_format: 6 (default, as IGN without colour), 7 or 8 (with RGB;
    8 adds NIR), or 1 / 3 (LAS 1.2). colour: fill RGB (and NIR), which the
    point format must have; without it, a format with RGB keeps RGB at 0
    (as IGN's tiles). crs_wkt: a WKT VLR, e.g. LAMBERT93_WKT (none by
    default). chunk_points: points per write (a chunk takes 26-38 bytes a
    point, the blocks in flight ~20 MB; measured +66 MB peak RSS for 30
    million points); the file does not depend on it. The same arguments
    give the same file, byte for byte; the tile appears whole or not at all.
    """
    import laspy
    _check(path, num_points, extent, point_format, colour, chunk_points, crs_wkt)
    path = Path(path)
    compress = path.suffix.lower() == '.laz'
    header = make_header(point_format, extent, crs_wkt)
    chunk = laspy.ScaleAwarePointRecord.zeros(min(chunk_points, num_points),
                                              header=header)
    backend = laspy.LazBackend.Lazrs if compress else None
    from tqdm import tqdm
    bar = tqdm(total=num_points, unit='pt', unit_scale=True, disable=not progress,
               desc=path.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with bar, atomic_path(path) as tmp, open(tmp, 'wb') as out, \
            laspy.open(out, mode='w', header=header, do_compress=compress,
                       laz_backend=backend, closefd=False) as writer:
        filled = 0
        for block in tile_blocks(header, num_points, seed, extent, colour):
            start = 0
            while start < len(block):
                take = min(len(chunk) - filled, len(block) - start)
                chunk.array[filled:filled + take] = block.array[start:start + take]
                filled, start = filled + take, start + take
                if filled == len(chunk):
                    writer.write_points(chunk)
                    bar.update(filled)
                    filled = 0
        if filled:
            writer.write_points(chunk[:filled])
            bar.update(filled)
    return path


def write_demo_lidar(out_dir, seed=0, tiles=(2, 2), tile_size=100.0,
                     points_per_tile=150_000):
    """Write a small folder of adjacent synthetic tiles (LAZ, point format
    6, tiles[0] x tiles[1] of tile_size metres from Lambert-93 770000,
    6277000, named as IGN's test tiles, e.g.
    synthetic_77000_627700_LA93.laz); returns their paths. One seed is one
    scene: the tiles join without a seam. The defaults give 4 tiles of 15
    points/m2 in about a second. ``out_dir`` must be empty or absent."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f'{str(out_dir)!r} is not empty: write the demo '
                              f'tiles into a new folder.')
    x0, y0 = DEFAULT_EXTENT[:2]
    paths = []
    for j in range(tiles[1]):
        for i in range(tiles[0]):
            left, bottom = x0 + i * tile_size, y0 + j * tile_size
            name = f'synthetic_{round(left) // 10}_{round(bottom) // 10}_LA93.laz'
            paths.append(write_synthetic_tile(
                out_dir / name, points_per_tile, seed=seed,
                extent=(left, bottom, left + tile_size, bottom + tile_size)))
    return paths


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m ncm_plugin.datasets.lidar.synthetic',
        description='Write a synthetic classified airborne LiDAR tile '
                    '(LAS/LAZ, like IGN LiDAR HD).')
    parser.add_argument('out', help='the tile to write, .las or .laz')
    parser.add_argument('--points', type=int, default=3_000_000,
                        help='number of points (default 3,000,000)')
    parser.add_argument('--seed', type=int, default=0,
                        help='same seed and arguments, same file')
    parser.add_argument('--extent', type=float, nargs=4, default=DEFAULT_EXTENT,
                        metavar=('XMIN', 'YMIN', 'XMAX', 'YMAX'),
                        help='metres (default the 1 km tile at 770000 6277000)')
    parser.add_argument('--point-format', type=int, default=6,
                        choices=GPS_FORMATS)
    parser.add_argument('--colour', action='store_true',
                        help='fill RGB (point format 3, 7 or 8)')
    parser.add_argument('--chunk-points', type=int, default=1_000_000)
    parser.add_argument('--lambert93', action='store_true',
                        help='write the CRS (EPSG:2154) as a WKT VLR')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        path = write_synthetic_tile(
            args.out, args.points, seed=args.seed, extent=tuple(args.extent),
            point_format=args.point_format, colour=args.colour,
            chunk_points=args.chunk_points,
            crs_wkt=LAMBERT93_WKT if args.lambert93 else None, progress=True)
    except ValueError as error:
        raise SystemExit(f'synthetic: {error}') from None
    print(f'{path}: {args.points:,} points in {time.perf_counter() - start:.1f} s')


if __name__ == '__main__':
    main()
