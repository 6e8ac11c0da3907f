"""A small synthetic S3DIS in the exact raw layout, for demos and tests.

``write_demo_s3dis`` writes ``Area_N/<room>/<room>.txt`` (every point of the
room) and ``Area_N/<room>/Annotations/<class>_<k>.txt`` (the points of one
object), one point per line ``x y z r g b``: coordinates in metres with 3
decimals, colours as integers 0..255, separated by spaces. That is what the
real Stanford3dDataset_v1.2_Aligned_Version holds, so the stock loader and
our conversion read it unchanged.

Rooms are axis-aligned boxes of a few metres placed side by side in their
area, like the aligned real data. Every surface is sampled on a jittered grid
of ``SPACING`` (4 cm, the first subsampling of KPConv on S3DIS) with
millimetre noise. Classes differ by geometry (height, size, orientation,
offset from the wall) and by a base colour, blurred by a colour offset per
object and noise per point, so a model has to use both.
"""
import io
from functools import partial
from pathlib import Path

import numpy as np

from .. import shapes
from ..shapes import outside_boxes

SPACING = 0.04
POSITION_NOISE = 0.003  # metres, per point
COLOR_NOISE = 10.0  # per point and channel
OBJECT_COLOR_NOISE = 14.0  # per object and channel

BASE_COLORS = {
    'ceiling': (205, 203, 196),
    'floor': (120, 108, 96),
    'wall': (182, 176, 164),
    'beam': (196, 194, 186),
    'column': (170, 166, 158),
    'window': (112, 140, 172),
    'door': (142, 100, 64),
    'table': (166, 134, 94),
    'chair': (58, 62, 78),
    'sofa': (128, 54, 52),
    'bookcase': (104, 82, 60),
    'board': (236, 236, 232),
    'clutter': None,  # a random colour per object
}

# Furniture per room type: sizes are (low, high) ranges in metres, counts are
# (low, high) inclusive, probabilities in [0, 1].
ROOM_TYPES = {
    'office': dict(
        size=((3.2, 4.4), (2.8, 3.6)), tables=(1, 2),
        table_size=((1.2, 1.8), (0.7, 0.9)), chairs_per_table=(1, 3),
        bookcases=(1, 2), sofa=0.4, board=0.8, windows=(1, 2), doors=(1, 1),
        beam=0.4, column=0.4, clutter=(3, 6)),
    'conferenceRoom': dict(
        size=((4.6, 5.6), (3.6, 4.2)), tables=(1, 1),
        table_size=((2.2, 2.8), (1.0, 1.2)), chairs_per_table=(5, 8),
        bookcases=(0, 1), sofa=0.0, board=1.0, windows=(1, 2), doors=(1, 2),
        beam=0.5, column=0.3, clutter=(2, 4)),
    'hallway': dict(
        size=((6.0, 7.5), (1.8, 2.2)), tables=(0, 0),
        table_size=None, chairs_per_table=(0, 0),
        bookcases=(0, 1), sofa=0.0, board=0.3, windows=(0, 1), doors=(2, 4),
        beam=1.0, column=1.0, clutter=(1, 3)),
    'lounge': dict(
        size=((3.6, 4.6), (3.2, 4.0)), tables=(1, 1),
        table_size=((0.9, 1.3), (0.5, 0.7)), chairs_per_table=(0, 2),
        bookcases=(0, 1), sofa=1.0, board=0.3, windows=(1, 2), doors=(1, 1),
        beam=0.3, column=0.5, clutter=(2, 5)),
}
# Area i gets rooms ROOM_CYCLE[i], ROOM_CYCLE[i + 1], ...: with 2 rooms per
# area over 4 areas every type, hence every class, appears.
ROOM_CYCLE = ('office', 'conferenceRoom', 'hallway', 'lounge')
# Features left to chance, given to the last room of an area that has none
# yet, so that a test area is less likely to miss a class.
AREA_FEATURES = ('beam', 'column', 'board')
ROW_FORMAT = '%.3f %.3f %.3f %d %d %d'  # x y z in metres, r g b in 0..255

sample_rect = partial(shapes.sample_rect, spacing=SPACING)
sample_box = partial(shapes.sample_box, spacing=SPACING)


class _Room:
    """Objects of one room, ``(class, points [M, 3])``, in room coordinates.

    The room spans ``[0, L] x [0, W] x [0, H]``. A wall is named by the axis
    it is normal to and its side: ``('x', 0)`` is the wall at x = 0. Positions
    on a wall are given as ``start`` along it and ``offset`` inward from it.
    Objects keep 10 cm from each other on the floor and along the walls.
    """

    WALLS = (('x', 0), ('x', 1), ('y', 0), ('y', 1))

    def __init__(self, kind, rng, force=()):
        self.spec = ROOM_TYPES[kind]
        self.rng = rng
        self.force = set(force)  # features of AREA_FEATURES this room must get
        (l_lo, l_hi), (w_lo, w_hi) = self.spec['size']
        self.size = np.array([rng.uniform(l_lo, l_hi), rng.uniform(w_lo, w_hi),
                              rng.uniform(2.5, 2.9)])
        self.objects = []
        self.holes = []  # (lo, hi) cut out of the walls behind doors, windows
        self.floor_used = []  # (lo, hi) x-y footprints taken
        self.wall_used = {wall: [] for wall in self.WALLS}  # (start, end) taken

    def count(self, key):
        lo, hi = self.spec[key]
        return int(self.rng.integers(lo, hi + 1))

    def chance(self, key):
        # drawn even when forced, so that forcing does not shift the stream
        draw = self.rng.uniform() < self.spec[key]
        return draw or key in self.force

    def add(self, name, points):
        self.objects.append((name, points))

    def wall_frame(self, wall):
        """Origin, unit direction along ``wall``, inward unit normal, length."""
        axis, side = wall
        length, width, _ = self.size
        if axis == 'x':
            return (np.array([side * length, 0.0, 0.0]),
                    np.array([0.0, 1.0, 0.0]),
                    np.array([1.0 - 2 * side, 0.0, 0.0]), width)
        return (np.array([0.0, side * width, 0.0]), np.array([1.0, 0.0, 0.0]),
                np.array([0.0, 1.0 - 2 * side, 0.0]), length)

    def wall_box(self, wall, start, width, depth, z0, z1, offset=0.0):
        """Axis-aligned ``(lo, hi)`` of a block standing on ``wall``, ``width``
        along it and ``depth`` inward, from height z0 to z1."""
        origin, along, normal, _ = self.wall_frame(wall)
        a = origin + start * along + offset * normal
        b = a + width * along + depth * normal
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        return np.array([lo[0], lo[1], z0]), np.array([hi[0], hi[1], z1])

    def long_walls(self):
        """The two walls along the long side of the room."""
        long_x = self.size[0] >= self.size[1]
        return self.WALLS[2:] if long_x else self.WALLS[:2]

    def against_some_wall(self, width, depth=0.0, margin=0.3, walls=WALLS):
        """``(wall, start)`` of a free ``width x depth`` spot against one of
        ``walls``, tried in random order, or None."""
        for index in self.rng.permutation(len(walls)):
            start = self.wall_spot(walls[index], width, margin, depth)
            if start is not None:
                return walls[index], start
        return None

    def wall_spot(self, wall, width, margin=0.3, depth=0.0):
        """Start of a free ``width`` interval on ``wall``, or None.

        With a ``depth``, the ``width x depth`` floor footprint in front of the
        wall must be free too, and is taken.
        """
        length = self.wall_frame(wall)[3]
        if length < width + 2 * margin:
            return None
        for _ in range(20):
            start = self.rng.uniform(margin, length - width - margin)
            if not all(start + width + 0.1 <= a or start >= b + 0.1
                       for a, b in self.wall_used[wall]):
                continue
            lo, hi = self.wall_box(wall, start, width, depth, 0.0, 0.0)
            if depth and not self.floor_free(lo[:2], hi[:2]):
                continue
            self.wall_used[wall].append((start, start + width))
            if depth:
                self.floor_used.append((lo[:2], hi[:2]))
            return start
        return None

    def floor_free(self, lo, hi):
        """Whether the x-y rectangle ``[lo, hi]`` is free."""
        return all(np.any(hi + 0.1 <= a) or np.any(lo >= b + 0.1)
                   for a, b in self.floor_used)

    def floor_spot(self, footprint, margin=0.15, centre=False):
        """Lower x-y corner of a free ``footprint [2]`` on the floor, or None;
        with ``centre`` the first tries are near the middle of the room."""
        room = self.size[:2]
        if np.any(room - footprint - margin <= margin):
            return None
        middle = (room - footprint) / 2
        for attempt in range(40):
            if centre and attempt < 10:
                lo = np.clip(middle + self.rng.uniform(-0.2, 0.2, 2), margin,
                             room - footprint - margin)
            else:
                lo = self.rng.uniform(margin, room - footprint - margin)
            if self.floor_free(lo, lo + footprint):
                self.floor_used.append((lo, lo + footprint))
                return lo
        return None

    def build(self):
        """All objects: openings first (they cut the walls), then the shell,
        then the furniture, largest first."""
        rng = self.rng
        for _ in range(self.count('doors')):
            width = rng.uniform(0.85, 1.0)
            height = rng.uniform(2.0, 2.15)
            self.add_opening('door', self.WALLS, width, 0.0, height, offset=0.03)
        if self.chance('board'):
            self.add_board()
        for _ in range(self.count('windows')):
            width, z0 = rng.uniform(1.0, 1.8), rng.uniform(0.8, 1.0)
            height = rng.uniform(1.1, 1.4)
            self.add_opening('window', self.long_walls(), width, z0, height,
                             offset=-0.06)
        self.add_shell()
        if self.chance('beam'):
            self.add_beam()
        if self.chance('column'):
            self.add_column()
        if self.chance('sofa'):
            self.add_sofa()
        for index in range(self.count('tables')):
            self.add_table_with_chairs(centre=index == 0)
        for _ in range(self.count('bookcases')):
            self.add_bookcase()
        for _ in range(self.count('clutter')):
            self.add_clutter()
        return self.objects

    def add_opening(self, name, walls, width, z0, height, offset):
        """A door or window on one of ``walls``: a panel ``offset`` inward
        (negative: recessed) replacing the wall behind it."""
        spot = self.against_some_wall(width, walls=walls)
        if spot is None:
            return
        wall, start = spot
        origin, along, normal, _ = self.wall_frame(wall)
        corner = origin + start * along + offset * normal + [0, 0, z0]
        self.add(name, sample_rect(corner, width * along, [0, 0, height],
                                   self.rng))
        self.holes.append(self.wall_box(wall, start, width, 0.2, z0,
                                        z0 + height, offset=-0.1))

    def add_board(self):
        """A whiteboard 2.5 cm off a long wall; the wall stays behind it."""
        wall_length = self.wall_frame(self.long_walls()[0])[3]
        width = min(self.rng.uniform(1.5, 2.6), wall_length - 0.8)
        spot = self.against_some_wall(width, walls=self.long_walls())
        if spot is None:
            return
        wall, start = spot
        origin, along, normal, _ = self.wall_frame(wall)
        z0, height = self.rng.uniform(0.85, 1.0), self.rng.uniform(1.0, 1.25)
        corner = origin + start * along + 0.025 * normal + [0, 0, z0]
        self.add('board', sample_rect(corner, width * along, [0, 0, height],
                                      self.rng))

    def add_shell(self):
        """Floor, ceiling and the four walls, minus the holes of the openings."""
        length, width, height = self.size
        self.add('floor', sample_rect([0, 0, 0], [length, 0, 0], [0, width, 0],
                                      self.rng))
        self.add('ceiling', sample_rect([0, 0, height], [length, 0, 0],
                                        [0, width, 0], self.rng))
        for wall in self.WALLS:
            origin, along, _, wall_length = self.wall_frame(wall)
            points = sample_rect(origin, wall_length * along, [0, 0, height],
                                 self.rng)
            self.add('wall', points[outside_boxes(points, self.holes)])

    def add_beam(self):
        """A beam under the ceiling across the short side of the room."""
        length, width, height = self.size
        w, d = self.rng.uniform(0.25, 0.4), self.rng.uniform(0.3, 0.45)
        if length >= width:
            x = self.rng.uniform(0.3 * length, 0.7 * length)
            lo, hi = [x, 0, height - d], [x + w, width, height]
        else:
            y = self.rng.uniform(0.3 * width, 0.7 * width)
            lo, hi = [0, y, height - d], [length, y + w, height]
        self.add('beam', sample_box(lo, hi, self.rng, bottom=True))

    def add_column(self):
        """A rectangular column, full height, in a random corner."""
        side = self.rng.uniform(0.3, 0.5, 2)
        corner = self.rng.integers(0, 2, 2)
        lo = np.where(corner == 0, 0.0, self.size[:2] - side)
        self.floor_used.append((lo, lo + side))
        self.add('column', sample_box([*lo, 0], [*(lo + side), self.size[2]],
                                      self.rng))

    def add_bookcase(self):
        """A shelf unit against a wall: a box shell with 2-3 shelves inside."""
        width, depth = self.rng.uniform(0.8, 1.2), self.rng.uniform(0.3, 0.4)
        spot = self.against_some_wall(width, depth, margin=0.6)
        if spot is None:
            return
        wall, start = spot
        lo, hi = self.wall_box(wall, start, width, depth, 0.0,
                               self.rng.uniform(1.6, 2.1), offset=0.01)
        parts = [sample_box(lo, hi, self.rng)]
        for z in np.linspace(lo[2], hi[2], self.rng.integers(4, 6))[1:-1]:
            parts.append(sample_rect([lo[0], lo[1], z], [hi[0] - lo[0], 0, 0],
                                     [0, hi[1] - lo[1], 0], self.rng))
        self.add('bookcase', np.concatenate(parts))

    def add_table_with_chairs(self, centre):
        """A table (top and four legs) with chairs around it."""
        size = np.array([self.rng.uniform(*side)
                         for side in self.spec['table_size']])
        # mostly with its long side along the room's long side
        along_room = self.size[0] >= self.size[1]
        if along_room != (self.rng.uniform() < 0.8):
            size = size[::-1]
        spot = self.floor_spot(size + 1.1, centre=centre)  # chairs around it
        if spot is None:
            return
        lo = spot + 0.55
        top_z = self.rng.uniform(0.70, 0.76)
        parts = [sample_box([*lo, top_z - 0.04], [*(lo + size), top_z],
                            self.rng, bottom=True)]
        for corner in (lo, lo + [size[0] - 0.05, 0], lo + [0, size[1] - 0.05],
                       lo + size - 0.05):
            parts.append(sample_box([*corner, 0],
                                    [*(corner + 0.05), top_z - 0.04], self.rng))
        self.add('table', np.concatenate(parts))
        for _ in range(self.count('chairs_per_table')):
            self.add_chair(lo, size)

    def add_chair(self, table_lo, table_size):
        """A chair (seat, backrest, four legs) 30 cm off a random edge of the
        table, its backrest away from the table."""
        edge = self.rng.integers(4)  # 0/1: low/high y edge, 2/3: low/high x
        axis = 1 if edge < 2 else 0  # the axis the chair is pushed out along
        high = edge % 2 == 1
        centre = table_lo + self.rng.uniform(0.1, 0.9, 2) * table_size
        centre[axis] = (table_lo[axis] + table_size[axis] + 0.3 if high
                        else table_lo[axis] - 0.3)
        seat = 0.45
        lo = centre - seat / 2
        back_lo, back_hi = lo.copy(), lo + seat
        if high:
            back_lo[axis] = back_hi[axis] - 0.05
        else:
            back_hi[axis] = back_lo[axis] + 0.05
        parts = [sample_box([*lo, 0.42], [*(lo + seat), 0.47], self.rng,
                            bottom=True),
                 sample_box([*back_lo, 0.47], [*back_hi, 0.9], self.rng)]
        for corner in (lo, lo + [seat - 0.04, 0], lo + [0, seat - 0.04],
                       lo + seat - 0.04):
            parts.append(sample_box([*corner, 0], [*(corner + 0.04), 0.42],
                                    self.rng))
        self.add('chair', np.concatenate(parts))

    def add_sofa(self):
        """A sofa against a wall: seat block, backrest along the wall, two
        armrests."""
        width, depth = self.rng.uniform(1.6, 2.2), self.rng.uniform(0.8, 0.95)
        spot = self.against_some_wall(width, depth, margin=0.6)
        if spot is None:
            return
        wall, start = spot
        end = start + width - 0.18
        boxes = [self.wall_box(wall, start, width, depth, 0.0, 0.42, 0.02),
                 self.wall_box(wall, start, width, 0.2, 0.42, 0.85, 0.02),
                 self.wall_box(wall, start, 0.18, depth, 0.42, 0.62, 0.02),
                 self.wall_box(wall, end, 0.18, depth, 0.42, 0.62, 0.02)]
        self.add('sofa', np.concatenate([sample_box(lo, hi, self.rng)
                                         for lo, hi in boxes]))

    def add_clutter(self):
        """A small box on the floor or on a table top."""
        size = self.rng.uniform(0.15, 0.5, 3)
        tables = [points for name, points in self.objects if name == 'table']
        if tables and self.rng.uniform() < 0.5:
            top = tables[self.rng.integers(len(tables))]
            low, high = top[:, :2].min(0), top[:, :2].max(0) - size[:2]
            if np.any(high <= low):
                return
            size[2] *= 0.6
            lo = np.array([*self.rng.uniform(low, high), top[:, 2].max()])
        else:
            spot = self.floor_spot(size[:2], margin=0.05)
            if spot is None:
                return
            lo = np.array([*spot, 0.0])
        self.add('clutter', sample_box(lo, lo + size, self.rng))


def _colors(name, count, rng):
    """Colours ``[count, 3]``, integers in 0..255, of one object: the base of
    its class (random for clutter) + an object offset + noise per point."""
    base = BASE_COLORS[name]
    if base is None:
        base = rng.uniform(40, 220, 3)
    base = np.asarray(base, dtype=np.float64) + rng.normal(0, OBJECT_COLOR_NOISE, 3)
    colors = base + rng.normal(0, COLOR_NOISE, (count, 3))
    return np.clip(np.round(colors), 0, 255).astype(np.int64)


def _format_rows(points, colors):
    """``x y z r g b`` lines of one object, as the raw dataset writes them."""
    buffer = io.BytesIO()
    np.savetxt(buffer, np.concatenate([points, colors], axis=1), fmt=ROW_FORMAT)
    return buffer.getvalue()


def room_names(areas, rooms_per_area):
    """``{area: [(kind, room name), ...]}``, numbered per kind as in S3DIS."""
    plan = {}
    for i, area in enumerate(areas):
        kinds = [ROOM_CYCLE[(i + j) % len(ROOM_CYCLE)]
                 for j in range(rooms_per_area)]
        plan[area] = [(kind, f'{kind}_{kinds[:j + 1].count(kind)}')
                      for j, kind in enumerate(kinds)]
    return plan


def write_demo_s3dis(out_dir, areas=(1, 2, 3, 5), rooms_per_area=2, seed=0):
    """Write a small synthetic S3DIS in the raw layout; returns the room folders.

    Deterministic for a given ``seed``. With the defaults: 8 rooms, all 13
    classes (all of them in Area_5 too), about 450 thousand points, under a
    second. ``out_dir`` must be empty or absent: files of an earlier dataset,
    or its converted cache, would mix with the new one.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f'{str(out_dir)!r} is not empty: write the demo '
                              f'dataset into a new folder.')
    rng = np.random.default_rng(seed)
    rooms = []
    for area, plan in room_names(areas, rooms_per_area).items():
        offset = np.array([rng.uniform(-5, 5), rng.uniform(-5, 5), 0.0])
        in_area = set()
        for index, (kind, name) in enumerate(plan):
            last = index == len(plan) - 1
            room = _Room(kind, rng, set(AREA_FEATURES) - in_area if last else ())
            objects = [(cls, points) for cls, points in room.build() if len(points)]
            in_area |= {cls for cls, _ in objects}
            room_dir = out_dir / f'Area_{area}' / name
            (room_dir / 'Annotations').mkdir(parents=True, exist_ok=True)
            counters, texts = {}, []
            for cls, points in objects:
                noise = rng.normal(0, POSITION_NOISE, points.shape)
                counters[cls] = counters.get(cls, 0) + 1
                text = _format_rows(points + offset + noise,
                                    _colors(cls, len(points), rng))
                file = room_dir / 'Annotations' / f'{cls}_{counters[cls]}.txt'
                file.write_bytes(text)
                texts.append(text)
            (room_dir / f'{name}.txt').write_bytes(b''.join(texts))
            offset[0] += room.size[0] + 0.3
            rooms.append(room_dir)
    return rooms
