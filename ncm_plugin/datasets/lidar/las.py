"""LAS/LAZ tiles of airborne LiDAR: reading points, features and ASPRS
classes with laspy, mapping the classes to a model's labels, and writing a
classified copy of a tile.

Coordinates come back in float64 and are recentred on the tile's own
reference point (its bounding-box minimum, rounded down to a metre): the
Lambert-93 values around 7e5 / 6e6 lose centimetres in float32.
"""
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np

log = logging.getLogger(__name__)

# ASPRS / IGN LiDAR HD codes -> labels of the default class map; every other
# code (1 unclassified, 7 noise, 9 water, 17 bridge, 64-66 IGN's structures
# and artefacts, ...) is ignored.
ASPRS_CLASS_MAP = {2: 0, 3: 1, 4: 2, 5: 3, 6: 4}
ASPRS_CLASS_NAMES = {0: 'ground', 1: 'low vegetation', 2: 'medium vegetation',
                     3: 'high vegetation', 4: 'building'}
DEFAULT_FEATURES = ('intensity', 'return_number', 'number_of_returns')
COLOUR = ('red', 'green', 'blue')


class LasError(ValueError):
    """A tile that cannot be used, named in the message."""


class Tile(NamedTuple):
    """One tile: points [N, 3] float64 relative to `origin` [3] float64,
    features [N, F] float32 (in `feature_names` order), ASPRS codes [N]."""
    path: Path
    points: np.ndarray
    origin: np.ndarray
    features: np.ndarray
    feature_names: tuple
    codes: np.ndarray


def open_las(path):
    """laspy's LasData of `path`, with one clear error for a file that is not
    LAS/LAZ, is cut short, or holds no point."""
    import laspy
    path = Path(path)
    try:
        data = laspy.read(path)
    except FileNotFoundError:
        raise
    except Exception as error:  # laspy raises several types for bad files
        raise LasError(f"{path}: not a readable LAS/LAZ file ({error})") \
            from error
    if data.header.point_count == 0 or len(data.points) == 0:
        raise LasError(f"{path}: the file holds no point")
    if len(data.points) != data.header.point_count:
        raise LasError(f"{path}: the header announces "
                       f"{data.header.point_count} points, the file holds "
                       f"{len(data.points)} (cut short?)")
    return data


def tile_origin(xyz):
    """The tile's reference point: its minimum, rounded down to a metre."""
    return np.floor(xyz.min(axis=0))


def read_tile(path, features=DEFAULT_FEATURES, colour='auto'):
    """A Tile with `features` (names of laspy dimensions) and, with colour
    'auto', red/green/blue when the point format has them and they are not
    all zero (scaled to 0..1), appended after them."""
    data = open_las(path)
    names = set(data.point_format.dimension_names)
    missing = [name for name in features if name not in names]
    if missing:
        raise LasError(
            f"{path}: point format {data.point_format.id} has no "
            f"{missing} (it has {sorted(names)}); choose other "
            f"dataset features")
    xyz = np.stack([np.asarray(data.x), np.asarray(data.y),
                    np.asarray(data.z)], axis=1)
    origin = tile_origin(xyz)
    columns = [np.asarray(data[name], dtype=np.float32) for name in features]
    feature_names = tuple(features)
    if colour == 'auto' and all(c in names for c in COLOUR):
        rgb = np.stack([np.asarray(data[c], dtype=np.float32) for c in COLOUR],
                       axis=1)
        if rgb.any():
            columns += list((rgb / max(float(rgb.max()), 1.0)).T)
            feature_names += COLOUR
    features = (np.stack(columns, axis=1) if columns
                else np.zeros((len(xyz), 0), dtype=np.float32))
    return Tile(Path(path), xyz - origin, origin, features, feature_names,
                np.asarray(data.classification, dtype=np.int64))


def check_class_map(class_map, num_classes, where='dataset.class_map'):
    """{ASPRS code: label} with int codes 0..255 and labels 0..num_classes-1;
    raises ValueError naming the bad key or label."""
    checked = {}
    for code, label in dict(class_map).items():
        try:
            code_int = int(code)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: key {code!r} is not an ASPRS class "
                             f"code (an integer 0..255)") from None
        if not 0 <= code_int <= 255 or str(code_int) != str(code).strip():
            raise ValueError(f"{where}: key {code!r} is not an ASPRS class "
                             f"code (an integer 0..255)")
        if not isinstance(label, int) or isinstance(label, bool) or \
                not 0 <= label < num_classes:
            raise ValueError(f"{where}.{code_int}: label {label!r} is out of "
                             f"range 0..{num_classes - 1} (num_classes "
                             f"{num_classes})")
        checked[code_int] = label
    return checked


def map_classes(codes, class_map, ignored_label, path=None):
    """Labels [N] of ASPRS codes [N]: class_map's label, or ignored_label for
    a code not in it (one warning per call, with the count of each such
    code)."""
    table = np.full(256, ignored_label, dtype=np.int64)
    for code, label in class_map.items():
        table[code] = label
    unknown = ~np.isin(codes, list(class_map))
    if unknown.any():
        values, counts = np.unique(codes[unknown], return_counts=True)
        log.warning("%s: ASPRS codes not in the class map, ignored: %s",
                    path or 'tile', ', '.join(f"{v}: {c} points" for v, c in
                                              zip(values, counts)))
    return table[codes]


def labels_to_codes(labels, class_map, unknown_code=1):
    """ASPRS codes [N] of model labels [N] (the inverse of class_map; a label
    that several codes map to gets the smallest code; unknown_code for a
    label no code maps to)."""
    inverse = {}
    for code, label in sorted(class_map.items()):
        inverse.setdefault(label, code)
    table = np.full(max(list(inverse) + [int(np.max(labels))]) + 1,
                    unknown_code, dtype=np.uint8)
    for label, code in inverse.items():
        table[label] = code
    return table[labels]


def write_classified(source, target, codes, probability):
    """A copy of tile `source` at `target` (.las or .laz) with every point and
    every field of the original, the classification replaced by `codes`
    [N] and the probability of the predicted class [N] in an extra byte
    dimension `probability` (float32). The source is not modified."""
    import laspy
    source, target = Path(source), Path(target)
    if source.resolve() == target.resolve():
        raise LasError(f"{target}: would overwrite the original tile")
    data = open_las(source)
    if len(codes) != len(data.points) or len(probability) != len(data.points):
        raise LasError(f"{source}: {len(data.points)} points but "
                       f"{len(codes)} classes and {len(probability)} "
                       f"probabilities")
    if 'probability' not in data.point_format.dimension_names:
        data.add_extra_dim(laspy.ExtraBytesParams(
            name='probability', type=np.float32,
            description='probability of the prediction'))
    data.classification = np.asarray(codes, dtype=np.uint8)
    data['probability'] = np.asarray(probability, dtype=np.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    data.write(target)
    return target
