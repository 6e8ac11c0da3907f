"""LAS/LAZ tiles of airborne LiDAR: reading points, features and ASPRS
classes with laspy (streamed in chunks: a 1 km tile holds tens of millions
of points) and mapping the classes to a model's labels (the classified
copies are written by las_output.py).

Coordinates come back in float64 and are recentred on the tile's own
reference point (its header's minimum, rounded down to a metre): the
Lambert-93 values around 7e5 / 6e6 lose centimetres in float32.

Labels follow Open3D-ML's convention for data with unlabelled points
(Semantic3D): 0 is ignored, the classes are 1..K.
"""
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np


log = logging.getLogger(__name__)

# ASPRS / IGN LiDAR HD codes -> labels of the default class map; every other
# code (1 unclassified, 7 noise, 9 water, 17 bridge, 64-66 IGN's structures
# and artefacts, ...) is label 0, ignored.
ASPRS_CLASS_MAP = {2: 1, 3: 2, 4: 3, 5: 4, 6: 5}
ASPRS_CLASS_NAMES = ('ground', 'low vegetation', 'medium vegetation',
                     'high vegetation', 'building')
IGNORED_LABEL = 0
DEFAULT_FEATURES = ('intensity', 'return_number', 'number_of_returns')
# Divisors that bring IGN LiDAR HD's features near 0..1 (intensity up to a
# few thousand, up to 5-7 returns); a feature not listed is not scaled.
DEFAULT_FEATURE_SCALE = {'intensity': 2000.0, 'return_number': 5.0,
                         'number_of_returns': 5.0}
COLOUR = ('red', 'green', 'blue')
COLOUR_SCALE = 65535.0  # LAS colour channels are 16-bit
CHUNK_POINTS = 1_000_000


class LasError(ValueError):
    """A tile that cannot be used, named in the message."""


class Chunk(NamedTuple):
    """Consecutive points of a tile: points [n, 3] float64 relative to the
    tile's origin, features [n, F] float32 (scaled), ASPRS codes [n], and
    the LAS 'withheld' flag [n] bool (None where the format has none)."""
    points: np.ndarray
    features: np.ndarray
    codes: np.ndarray
    withheld: np.ndarray = None


class Tile(NamedTuple):
    """One tile: points [N, 3] float64 relative to `origin` [3] float64,
    features [N, F] float32 (in `feature_names` order, scaled), ASPRS codes [N]."""
    path: Path
    points: np.ndarray
    origin: np.ndarray
    features: np.ndarray
    feature_names: tuple
    codes: np.ndarray


def _bad_file(path, error):
    return LasError(f"{path}: not a readable LAS/LAZ file ({error})")


class TileReader:
    """A LAS/LAZ file opened for streaming: its header checked, its origin and
    the features it gives (`feature_names`) known before any point is read.

    colour: 'auto' (red/green/blue appended when the point format has them;
    the caller drops them if they turn out all zero), True (required), False.
    """

    def __init__(self, path, features=DEFAULT_FEATURES, colour='auto',
                 feature_scale=None):
        import laspy
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such LAS/LAZ file")
        try:
            with laspy.open(self.path) as reader:
                self.header = reader.header
        except Exception as error:  # laspy raises several types for bad files
            raise _bad_file(self.path, error) from error
        self.point_count = int(self.header.point_count)
        if self.point_count == 0:
            raise LasError(f"{self.path}: the file holds no point")
        names = set(self.header.point_format.dimension_names)
        self._dimensions = names
        missing = [name for name in features if name not in names]
        if missing:
            raise LasError(
                f"{self.path}: point format {self.header.point_format.id} has "
                f"no {missing} (it has {sorted(names)}); choose other "
                f"dataset features")
        has_colour = all(c in names for c in COLOUR)
        if colour is True and not has_colour:
            raise LasError(f"{self.path}: point format "
                           f"{self.header.point_format.id} has no colour "
                           f"(dataset.colour is true)")
        self.features = tuple(features)
        self.feature_names = self.features + (
            COLOUR if colour and has_colour else ())
        scale = dict(DEFAULT_FEATURE_SCALE if feature_scale is None
                     else feature_scale)
        scale.update({c: COLOUR_SCALE for c in COLOUR})
        self.scales = np.array([scale.get(n, 1.0) for n in self.feature_names],
                               dtype=np.float32)
        self.origin = np.floor(np.asarray(self.header.mins, dtype=np.float64))

    def chunks(self, chunk_points=CHUNK_POINTS):
        """Chunks in file order; a file cut short is a LasError naming it."""
        import laspy
        read = 0
        try:
            with laspy.open(self.path) as reader:
                for record in reader.chunk_iterator(chunk_points):
                    if len(record) == 0:
                        break
                    read += len(record)
                    yield self._chunk(record)
        except LasError:
            raise
        except Exception as error:
            raise LasError(f"{self.path}: unreadable after {read} of "
                           f"{self.point_count} points ({error}); the file "
                           f"is damaged or cut short") from error
        if read != self.point_count:
            raise LasError(f"{self.path}: the header announces "
                           f"{self.point_count} points, the file holds "
                           f"{read} (cut short?)")

    def _chunk(self, record):
        xyz = np.stack([np.asarray(record.x), np.asarray(record.y),
                        np.asarray(record.z)], axis=1) - self.origin
        columns = [np.asarray(record[name], dtype=np.float32)
                   for name in self.feature_names]
        features = (np.stack(columns, axis=1) / self.scales if columns else
                    np.zeros((len(xyz), 0), dtype=np.float32))
        withheld = (np.asarray(record['withheld'], dtype=bool)
                    if 'withheld' in self._dimensions else None)
        return Chunk(xyz, features.astype(np.float32),
                     np.asarray(record.classification, dtype=np.int64),
                     withheld)


def read_tile(path, features=DEFAULT_FEATURES, colour='auto',
              feature_scale=None, chunk_points=CHUNK_POINTS):
    """A whole Tile (for small tiles and checks; conversion streams), with
    'auto' colour dropped when it is all zero."""
    reader = TileReader(path, features, colour, feature_scale)
    chunks = list(reader.chunks(chunk_points))
    features = np.concatenate([c.features for c in chunks])
    names = reader.feature_names
    if colour == 'auto' and names[-3:] == COLOUR and not features[:, -3:].any():
        features, names = features[:, :-3], names[:-3]
    return Tile(reader.path, np.concatenate([c.points for c in chunks]),
                reader.origin, features, names,
                np.concatenate([c.codes for c in chunks]))


def check_class_map(class_map, num_classes, where='dataset.class_map'):
    """{ASPRS code: label} with int codes 0..255 and labels 0..num_classes
    (0 = ignored); raises ValueError naming the bad key or label."""
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
                not 0 <= label <= num_classes:
            raise ValueError(f"{where}.{code_int}: label {label!r} is out of "
                             f"range 0..{num_classes} (0 = ignored, then the "
                             f"{num_classes} classes)")
        checked[code_int] = label
    return checked


def class_table(class_map):
    """[256] label of every ASPRS code (0 = ignored for unmapped codes)."""
    table = np.full(256, IGNORED_LABEL, dtype=np.int64)
    for code, label in class_map.items():
        table[code] = label
    return table


def warn_unknown_codes(path, code_counts, class_map):
    """One warning per tile, with the points of each code the map ignores
    (code_counts [256])."""
    unknown = [(code, int(count)) for code, count in enumerate(code_counts)
               if count and code not in class_map]
    if unknown:
        log.warning("%s: ASPRS codes not in the class map, ignored: %s", path,
                    ', '.join(f"{code}: {count} points"
                              for code, count in unknown))


def map_classes(codes, class_map, path='tile'):
    """Labels [N] of ASPRS codes [N]: class_map's label, or 0 (ignored) for
    a code not in it (one warning, with the count of each such code)."""
    warn_unknown_codes(path, np.bincount(codes, minlength=256), class_map)
    return class_table(class_map)[codes]


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
