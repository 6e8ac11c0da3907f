"""A small synthetic ScanNet v2 in the exact raw layout, for demos and tests.

``write_demo_scannet`` writes, for scenes named as in the official split lists
(so the official lists split them):

    OUT/scans/<scene>/<scene>_vh_clean_2.ply                 binary little-endian mesh: vertices
                                                             x y z red green blue alpha, triangles
    OUT/scans/<scene>/<scene>_vh_clean_2.labels.ply          same, + ushort 'label' (NYU40 id)
    OUT/scans/<scene>/<scene>_vh_clean_2.0.010000.segs.json  'segIndices': a segment per vertex
    OUT/scans/<scene>/<scene>_vh_clean.aggregation.json      'segGroups': objects as segment lists
    OUT/scans/<scene>/<scene>.txt                            meta data with 'axisAlignment'
    OUT/scans_test/<scene>/<scene>_vh_clean_2.ply            test scans: mesh (+ meta) only

A scene is a box room of a few metres: walls, floor, a strip of ceiling, and
furniture of most benchmark classes plus objects whose NYU40 id is outside
them (ceiling 22, box 29, object 40) and an unannotated patch of floor (label
0). Surfaces are sampled every ``SPACING`` on a jittered grid; the mesh is
stored in scan coordinates, i.e. rotated and shifted by the inverse of its
axis alignment, as the real scans. Categories are raw ScanNet names, turned
into NYU40 ids by ScanNet's own scannetv2-labels.combined.tsv.
"""
import json
from functools import partial
from pathlib import Path

import numpy as np

from .. import shapes
from ..ply import write_ply
from .convert import read_label_map

SPACING = 0.06
POSITION_NOISE = 0.004
COLOR_NOISE = 10.0
# The first scenes of the official lists, sorted: (train, val, test).
SCENES = {'train': ('scene0000_00', 'scene0000_01', 'scene0001_00'),
          'val': ('scene0011_00', 'scene0011_01'),
          'test': ('scene0707_00', 'scene0708_00')}
COLORS = {'wall': (190, 186, 176), 'floor': (128, 104, 80), 'ceiling': (220, 220, 214),
          'bed': (170, 150, 190), 'table': (150, 110, 70), 'desk': (120, 90, 60),
          'chair': (60, 64, 80), 'sofa': (140, 50, 50), 'cabinet': (200, 170, 120),
          'bookshelf': (100, 80, 56), 'door': (150, 104, 60), 'window': (120, 160, 200),
          'picture': (60, 140, 90), 'trash can': (90, 110, 90), 'box': (170, 140, 100),
          'object': (200, 80, 160)}
# Furniture against a wall: category, (width, depth, height) in metres, height above the floor.
WALL_ITEMS = (('bed', (2.0, 1.5, 0.5), 0.0), ('cabinet', (0.8, 0.5, 0.9), 0.0),
              ('bookshelf', (0.9, 0.35, 1.8), 0.0), ('desk', (1.4, 0.7, 0.05), 0.72),
              ('sofa', (1.8, 0.8, 0.45), 0.0), ('trash can', (0.3, 0.3, 0.4), 0.0))
# Flat things on a wall: category, (width, height), height of the lower edge, offset from the wall.
WALL_PANELS = (('door', (0.9, 2.0), 0.0, 0.02), ('window', (1.2, 1.0), 1.0, 0.03),
               ('picture', (0.6, 0.4), 1.5, 0.01))


# The S3DIS generator's surface samplers, at this layout's spacing.
sample_rect = partial(shapes.sample_rect, spacing=SPACING)
sample_box = partial(shapes.sample_box, spacing=SPACING)


def room_objects(rng, size):
    """[(category, points [M, 3])] of one room ``size = (W, D, H)``, in aligned coordinates."""
    width, depth, height = size
    objects = []
    walls = (((0, 0, 0), (width, 0, 0)), ((0, depth, 0), (width, 0, 0)),
             ((0, 0, 0), (0, depth, 0)), ((width, 0, 0), (0, depth, 0)))
    for origin, along in walls:
        objects.append(('wall', sample_rect(origin, along, (0, 0, height), rng)))
    floor = sample_rect((0, 0, 0), (width, 0, 0), (0, depth, 0), rng)
    unannotated = (floor[:, 0] > width - 0.8) & (floor[:, 1] > depth - 0.8)
    objects += [('floor', floor[~unannotated]), (None, floor[unannotated])]
    objects.append(('ceiling', sample_rect((0, 0, height), (width, 0, 0), (0, 0.5, 0), rng)))
    # Furniture along the walls y = 0 and y = depth, panels on the walls x = 0 and x = width.
    for index, (category, (w, d, h), z) in enumerate(WALL_ITEMS):
        side = index % 2
        x = rng.uniform(0.1, max(0.2, width - w - 0.1))
        y = 0.02 if side == 0 else depth - d - 0.02
        objects.append((category, sample_box((x, y, z), (x + w, y + d, z + h), rng, bottom=z > 0)))
    for index, (category, (w, h), z, offset) in enumerate(WALL_PANELS):
        x = offset if index % 2 == 0 else width - offset
        y = rng.uniform(0.2, max(0.3, depth - w - 0.2))
        objects.append((category, sample_rect((x, y, z), (0, w, 0), (0, 0, h), rng)))
    # A table in the middle, chairs around it, small things on and beside it.
    cx, cy = width / 2 + rng.uniform(-0.3, 0.3), depth / 2 + rng.uniform(-0.3, 0.3)
    top = np.array([cx - 0.6, cy - 0.4, 0.72])
    table = [sample_box(top, top + (1.2, 0.8, 0.05), rng, bottom=True)]
    for leg in ((0, 0), (1.15, 0), (0, 0.75), (1.15, 0.75)):
        corner = np.array([top[0] + leg[0], top[1] + leg[1], 0.0])
        table.append(sample_box(corner, corner + (0.05, 0.05, 0.72), rng))
    objects.append(('table', np.concatenate(table)))
    for sign in (-1, 1):
        seat = np.array([cx - 0.22 + sign * 0.3, cy + sign * 0.7 - 0.22, 0.45])
        back_y = seat[1] + (0.45 if sign > 0 else -0.05)
        chair = [sample_box(seat, seat + (0.45, 0.45, 0.05), rng, bottom=True),
                 sample_box((seat[0], back_y, 0.5), (seat[0] + 0.45, back_y + 0.05, 0.95), rng)]
        objects.append(('chair', np.concatenate(chair)))
    objects.append(('object', sample_box(top + (0.3, 0.3, 0.05), top + (0.5, 0.5, 0.25), rng)))
    objects.append(('box', sample_box((cx + 1.0, cy - 0.2, 0), (cx + 1.4, cy + 0.2, 0.3), rng)))
    return objects


def axis_alignment(rng):
    """A random 4x4 alignment: rotation about z and a shift, as in a scan's meta file."""
    angle = rng.uniform(0, 2 * np.pi)
    matrix = np.eye(4)
    matrix[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    matrix[:3, 3] = (rng.uniform(-3, 3), rng.uniform(-3, 3), rng.uniform(-0.2, 0.2))
    return matrix


def scene_vertices(rng):
    """Aligned points ``[N, 3]``, colours ``[N, 3] uint8``, object index ``[N]`` (-1 = none), and
    the category of each object, for one random room."""
    size = (rng.uniform(4.0, 6.0), rng.uniform(3.5, 5.0), 2.6)
    objects = room_objects(rng, size)
    points = np.concatenate([p for _, p in objects])
    owner = np.repeat(np.arange(len(objects)), [len(p) for _, p in objects])
    categories = [c for c, _ in objects]
    base = np.array([COLORS[c or 'floor'] for c in categories], dtype=float)
    base += rng.normal(0, 12, base.shape)  # every object its own shade
    colors = base[owner] + rng.normal(0, COLOR_NOISE, (len(points), 3))
    points = points + rng.normal(0, POSITION_NOISE, points.shape)
    owner = np.where(np.array([c is not None for c in categories])[owner], owner, -1)
    order = rng.permutation(len(points))  # mesh vertices come in no particular order
    return points[order], np.clip(colors, 0, 255).astype(np.uint8)[order], owner[order], categories


def segments_of(points, owner):
    """A segment id per vertex: each object (and the unannotated rest) cut into 0.5 m cells."""
    cells = np.floor(points / 0.5).astype(np.int64)
    keys = np.c_[owner + 1, cells]
    _, segment = np.unique(keys, axis=0, return_inverse=True)
    return segment.ravel() * 3 + 11  # arbitrary ids, as the real over-segmentation


def write_scene(folder, name, rng, labelled, label_map):
    """Write one scan's raw files into ``folder``; returns its vertex count."""
    folder.mkdir(parents=True, exist_ok=True)
    points, colors, owner, categories = scene_vertices(rng)
    meta = ['colorHeight = 968', 'colorWidth = 1296', 'depthHeight = 480', 'depthWidth = 640']
    if labelled:  # test scans come without an alignment
        align = axis_alignment(rng)
        points = (points - align[:3, 3]) @ align[:3, :3]  # inverse: scan = R^T (aligned - t)
        meta.insert(0, 'axisAlignment = ' + ' '.join(f'{v:.6f}' for v in align.ravel()))
    meta.append(f'numColorFrames = {rng.integers(800, 3000)}')
    meta.append('sceneType = Living room / Lounge')
    (folder / f'{name}.txt').write_text('\n'.join(meta) + '\n')
    fields = [('x', 'f4'), ('y', 'f4'), ('z', 'f4'), ('red', 'u1'), ('green', 'u1'),
              ('blue', 'u1'), ('alpha', 'u1')]
    vertex = np.zeros(len(points), dtype=fields)
    for axis, key in enumerate('xyz'):
        vertex[key] = points[:, axis]
    for channel, key in enumerate(('red', 'green', 'blue')):
        vertex[key] = colors[:, channel]
    vertex['alpha'] = 255
    faces = np.arange(3 * (len(points) // 3)).reshape(-1, 3)
    write_ply(folder / f'{name}_vh_clean_2.ply', vertex, faces, comments=('VCGLIB generated',))
    if not labelled:
        return len(points)
    object_nyu40 = np.array([label_map[c] if c else 0 for c in categories] + [0], dtype=np.uint16)
    labels = np.zeros(len(points), dtype=fields + [('label', 'u2')])
    for key, _ in fields:
        labels[key] = vertex[key]
    labels['label'] = object_nyu40[owner]  # owner -1 -> the last entry, 0
    write_ply(folder / f'{name}_vh_clean_2.labels.ply', labels, faces)
    segment = segments_of(points, owner)
    segs_name = f'{name}_vh_clean_2.0.010000.segs.json'
    with open(folder / segs_name, 'w') as f:
        json.dump({'params': {'kThresh': '0.0001', 'segMinVerts': '20', 'minPoints': '750',
                              'maxPoints': '5000', 'thinThresh': '0.05', 'flatThresh': '0.001',
                              'minLength': '0.02', 'maxLength': '1'},
                   'sceneId': name, 'segIndices': segment.tolist()}, f)
    groups = []
    annotated = [i for i, c in enumerate(categories) if c is not None]
    for object_id, index in enumerate(annotated):
        groups.append({'id': object_id, 'objectId': object_id, 'label': categories[index],
                       'segments': np.unique(segment[owner == index]).tolist()})
    with open(folder / f'{name}_vh_clean.aggregation.json', 'w') as f:
        json.dump({'sceneId': f'scannet.{name}', 'appId': 'Aggregator.v2', 'segGroups': groups,
                   'segmentsFile': f'scannet.{segs_name}'}, f)
    return len(points)


def write_demo_scannet(out_dir, seed=0, scenes=None):
    """Write raw scans under ``out_dir/scans`` and ``out_dir/scans_test``; returns
    ``{scene: vertex count}``. ``scenes`` maps split -> scene names (default SCENES);
    the same seed writes the same files."""
    out_dir = Path(out_dir)
    scenes = SCENES if scenes is None else scenes
    label_map = read_label_map()
    counts = {}
    for split, names in scenes.items():
        for name in names:
            # One generator per scene: a scene does not change when others are added.
            rng = np.random.default_rng([seed, int(name[5:9]), int(name[10:12])])
            folder = out_dir / ('scans_test' if split == 'test' else 'scans') / name
            counts[name] = write_scene(folder, name, rng, split != 'test', label_map)
    return counts
