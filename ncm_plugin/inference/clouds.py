"""Clouds other than LAS/LAZ tiles, read into what KPConv's preprocess takes.

Every reader returns a `Cloud`: points [N, 3] float32 and colour [N, 3]
float32 in 0..255 (None when the file has none), as the indoor loaders give
them in training (S3DIS, ScanNet20 and Semantic3D all give 'feat' = r g b
0..255, float32; Semantic3D's intensity is not model input), plus the file's
labels when it has some, in the label values of its own dataset. The input
kinds, by `cloud_kind`:

    ply           x y z [red green blue] [any other vertex property]
    scannet_mesh  ScanNet's <scene>_vh_clean_2.ply (or its .labels.ply):
                  labels = the NYU40 'label' of <scene>_vh_clean_2.labels.ply
                  mapped to the ScanNet20 labels 0..20; points aligned by the
                  axisAlignment of <scene>.txt when it is there (as
                  datasets/scannet/convert.py does)
    s3dis_room    a room folder Area_N/<room>/: Annotations/<class>_<k>.txt
                  (points in sorted file order, labels = the S3DIS class of
                  each file, unknown classes clutter), else <room>.txt
                  without labels; x y z r g b per line
    semantic3d    <scan>.txt of 7 columns x y z intensity r g b, labels 0..8
                  from <scan>.labels when it is there
    s3dis_text    a .txt of 6 columns x y z r g b (an S3DIS room file)
    npy           [N, 3 + F]: x y z, then F = 3 colour columns (or none)
    npz           'point' [N, 3], optional 'feat' [N, 3] or 'colour' [N, 3],
                  optional 'label' [N]

A PLY's vertex element is kept whole (`vertices`) and its triangles
(`faces`, binary triangle meshes) so that its classified copy keeps them.
Corrupted rows of the text layouts are skipped with a warning, as in their
conversions; every other problem is a CloudError naming the file.
"""
import logging
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..datasets.ply import FORMATS, read_element, read_header

log = logging.getLogger(__name__)

COLOUR = ('red', 'green', 'blue')
SCANNET_MESH = '_vh_clean_2.ply'
SCANNET_LABELS = '_vh_clean_2.labels.ply'
SUFFIXES = ('.ply', '.txt', '.npy', '.npz')
MAX_WARNINGS = 20  # skipped rows warned about one by one, per file


class CloudError(ValueError):
    """An input cloud that cannot be used; the message names the file."""


class Cloud(NamedTuple):
    """One input cloud. points [N, 3] float32; colour [N, 3] float32 0..255
    or None; labels [N] int32 (the file's dataset labels) or None;
    vertices: a PLY's vertex element [N] (every property, file order) or
    None; faces [F, 3] int32 of a binary triangle mesh or None."""
    path: Path
    kind: str
    points: np.ndarray
    colour: np.ndarray | None = None
    labels: np.ndarray | None = None
    vertices: np.ndarray | None = None
    faces: np.ndarray | None = None


def is_cloud_input(path):
    """Whether `path` is an input `read_cloud` takes: a folder (an S3DIS
    room) or a file of one of SUFFIXES."""
    path = Path(path)
    return path.is_dir() or path.suffix.lower() in SUFFIXES


def cloud_kind(path):
    """The kind of input `path` is (see the module docstring)."""
    path = Path(path)
    name, suffix = path.name.lower(), path.suffix.lower()
    if path.is_dir():
        return 's3dis_room'
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if name.endswith(SCANNET_MESH) or name.endswith(SCANNET_LABELS):
        return 'scannet_mesh'
    if suffix == '.txt':
        columns = _columns_of(path)
        if columns == 7:
            return 'semantic3d'
        if columns == 6:
            return 's3dis_text'
        raise CloudError(f"{path}: {columns} values on its first line; a "
                         f".txt is read as Semantic3D (x y z intensity r g b) "
                         f"or S3DIS (x y z r g b)")
    kinds = {'.ply': 'ply', '.npy': 'npy', '.npz': 'npz'}
    if suffix not in kinds:
        raise CloudError(f"{path}: not a cloud ncm-predict reads (a folder "
                         f"or a file ending in {', '.join(SUFFIXES)})")
    return kinds[suffix]


def read_cloud(path):
    """The `Cloud` of `path`, read as its `cloud_kind` says."""
    path = Path(path)
    readers = {'ply': read_ply_cloud, 'scannet_mesh': read_scannet_mesh,
               's3dis_room': read_s3dis_room, 'semantic3d': read_semantic3d,
               's3dis_text': read_s3dis_text, 'npy': read_npy_cloud,
               'npz': read_npz_cloud}
    kind = cloud_kind(path)
    try:
        cloud = readers[kind](path)
    except CloudError:
        raise
    except (ValueError, EOFError, zipfile.BadZipFile) as error:
        # the dataset readers' (PlyError is one) and numpy's
        message = str(error)
        raise CloudError(message if str(path) in message else
                         f"{path}: {message}") from None
    return _checked(cloud)


def _checked(cloud):
    """The cloud, after the shape and value checks every kind shares."""
    n = len(cloud.points)
    if n == 0:
        raise CloudError(f"{cloud.path}: no point")
    if cloud.points.shape != (n, 3):
        raise CloudError(f"{cloud.path}: points of shape "
                         f"{cloud.points.shape}, expected [N, 3]")
    bad = ~np.isfinite(cloud.points).all(axis=1)
    if bad.any():
        raise CloudError(f"{cloud.path}: {int(bad.sum())} points with a "
                         f"coordinate that is not a finite number (first: "
                         f"point {int(np.flatnonzero(bad)[0])})")
    if cloud.colour is not None and cloud.colour.shape != (n, 3):
        raise CloudError(f"{cloud.path}: colour of shape "
                         f"{cloud.colour.shape}, expected [{n}, 3]")
    if cloud.labels is not None and cloud.labels.shape != (n,):
        raise CloudError(f"{cloud.path}: labels of shape "
                         f"{cloud.labels.shape}, expected [{n}]")
    return cloud


# -- PLY ----------------------------------------------------------------------
def read_ply_cloud(path):
    """A PLY's vertices: x y z, colour from red green blue when all three
    are there, every property kept; no labels."""
    vertices = read_element(path, 'vertex')
    return Cloud(Path(path), 'ply', _xyz(path, vertices),
                 _ply_colour(path, vertices), None, vertices,
                 read_triangles(path))


def read_scannet_mesh(path):
    """A ScanNet scan's mesh: aligned points, colour, ScanNet20 labels from
    the scene's labels.ply (the file itself when it is that one)."""
    from ..datasets.scannet.convert import (read_axis_alignment,
                                            read_vertex_labels)
    from ..datasets.scannet.loader import nyu40_to_label
    path = Path(path)
    name = path.name
    cut = len(SCANNET_LABELS) if name.lower().endswith(SCANNET_LABELS) \
        else len(SCANNET_MESH)
    scene = name[:-cut]
    vertices = read_element(path, 'vertex')
    points = _xyz(path, vertices)
    align = read_axis_alignment(path.parent / f'{scene}.txt')
    if align is not None:
        points = (points @ align[:3, :3].T + align[:3, 3]).astype(np.float32)
    labels_path = path.parent / f'{scene}{SCANNET_LABELS}'
    labels = None
    if labels_path.is_file():
        nyu40 = read_vertex_labels(labels_path)
        if len(nyu40) != len(points):
            raise CloudError(f"{labels_path} has {len(nyu40)} vertices but "
                             f"{path} has {len(points)}")
        labels = nyu40_to_label(nyu40)
    return Cloud(path, 'scannet_mesh', points, _ply_colour(path, vertices),
                 labels, vertices, read_triangles(path))


def _xyz(path, vertices):
    absent = [a for a in 'xyz' if a not in vertices.dtype.names]
    if absent:
        raise CloudError(f"{path}: vertex element has no {absent} "
                         f"properties")
    return np.stack([vertices[a].astype(np.float32) for a in 'xyz'], axis=1)


def _ply_colour(path, vertices):
    """[N, 3] float32 0..255 of red green blue, or None: 8-bit channels as
    they are, 16-bit ones scaled to 0..255, float ones taken as 0..255."""
    if not all(c in vertices.dtype.names for c in COLOUR):
        return None
    colour = np.stack([vertices[c] for c in COLOUR], axis=1)
    if colour.dtype.kind in 'ui' and colour.dtype.itemsize == 2:
        colour = colour.astype(np.float32) * np.float32(255 / 65535)
    colour = colour.astype(np.float32)
    if vertices.dtype['red'].kind == 'f' and len(colour) and \
            colour.max() <= 1.0:
        log.warning("%s: colours are floats in 0..1; the model was trained "
                    "on 0..255 and reads them as they are", path)
    return colour


def read_triangles(path):
    """[F, 3] int32 triangles of a binary PLY whose elements are a vertex
    element then a face element of one list property, every face a
    triangle; None for any other file (the copy then has vertices only)."""
    header = read_header(path)
    names = [e.name for e in header.elements]
    if names != ['vertex', 'face'] or header.format == 'ascii':
        if 'face' in names:
            log.info("%s: faces not kept (a binary vertex-then-face file "
                     "is needed)", path)
        return None
    vertex, face = header.elements
    if not vertex.is_scalar or len(face.properties) != 1 or \
            face.properties[0].count_type is None:
        log.info("%s: faces not kept (not one list per face)", path)
        return None
    order = FORMATS[header.format]
    prop = face.properties[0]
    record = np.dtype([('n', order + prop.count_type),
                       ('v', order + prop.type, (3,))])
    offset = header.data_offset + vertex.count * vertex.dtype(order).itemsize
    if offset + face.count * record.itemsize != Path(path).stat().st_size:
        log.info("%s: faces not kept (not all triangles)", path)
        return None
    faces = np.fromfile(path, dtype=record, count=face.count, offset=offset)
    if not (faces['n'] == 3).all():
        log.info("%s: faces not kept (not all triangles)", path)
        return None
    return faces['v'].astype(np.int32)


# -- S3DIS --------------------------------------------------------------------
def read_s3dis_room(folder):
    """An S3DIS room folder: its Annotations (labelled, in sorted file
    order, as the conversion stores the room) or else its <room>.txt."""
    from ..datasets.s3dis.convert import CLASS_NAMES, class_of, \
        read_annotation
    folder = Path(folder)
    files = sorted((folder / 'Annotations').glob('*.txt'))
    if not files:
        whole = folder / f'{folder.name}.txt'
        if not whole.is_file():
            raise CloudError(f"{folder}: not an S3DIS room folder (no "
                             f"Annotations/*.txt and no {whole.name})")
        points, colour = _s3dis_rows(whole)
        return Cloud(folder, 's3dis_room', points, colour)
    label_of = {name: index for index, name in enumerate(CLASS_NAMES)}
    blocks, labels = [], []
    for file in files:
        values, skipped = read_annotation(file)
        _warn_skipped(file, skipped)
        blocks.append(values)
        labels.append(np.full(len(values), label_of[class_of(file)],
                              dtype=np.int32))
    values = np.concatenate(blocks)
    return Cloud(folder, 's3dis_room', values[:, :3].astype(np.float32),
                 values[:, 3:6].astype(np.float32), np.concatenate(labels))


def read_s3dis_text(path):
    """A text file of x y z r g b lines (an S3DIS room's <room>.txt)."""
    points, colour = _s3dis_rows(path)
    return Cloud(Path(path), 's3dis_text', points, colour)


def _s3dis_rows(path):
    from ..datasets.s3dis.convert import read_annotation
    values, skipped = read_annotation(path)
    _warn_skipped(path, skipped)
    return (values[:, :3].astype(np.float32),
            values[:, 3:6].astype(np.float32))


def _warn_skipped(path, skipped):
    for row in skipped[:MAX_WARNINGS]:
        log.warning("%s:%d: skipped corrupted row (%s)", row.file, row.line,
                    row.reason)
    if len(skipped) > MAX_WARNINGS:
        log.warning("%s: %d more corrupted rows skipped", path,
                    len(skipped) - MAX_WARNINGS)


def _columns_of(path):
    """Values on the first non-blank line of a text file (0 if none)."""
    with open(path, 'rb') as f:
        for line in f:
            if line.strip():
                return len(line.split())
    return 0


# -- Semantic3D ---------------------------------------------------------------
def read_semantic3d(path):
    """A Semantic3D scan: x y z intensity r g b lines, labels from the
    .labels next to it (same line count) when there is one."""
    from ..datasets.semantic3d.convert import ScanFiles, read_raw_scan
    path = Path(path)
    labels_path = path.with_suffix('.labels')
    scan = ScanFiles(path.stem, path,
                     labels_path if labels_path.is_file() else None)
    values, labels = read_raw_scan(scan)
    return Cloud(path, 'semantic3d', values[:, :3], values[:, 4:7],
                 None if labels is None else labels.astype(np.int32))


# -- arrays -------------------------------------------------------------------
def read_npy_cloud(path):
    """[N, 3 + F] array: x y z, then the colour (F = 3) or nothing."""
    array = np.load(path, allow_pickle=False)
    if array.ndim != 2 or array.shape[1] not in (3, 6):
        raise CloudError(f"{path}: an array of shape {array.shape}; "
                         f"expected [N, 3] (x y z) or [N, 6] (x y z r g b, "
                         f"colour 0..255)")
    colour = array[:, 3:].astype(np.float32) if array.shape[1] == 6 else None
    return Cloud(Path(path), 'npy', array[:, :3].astype(np.float32), colour)


def read_npz_cloud(path):
    """Arrays 'point' [N, 3], optional 'feat' or 'colour' [N, 3] (r g b
    0..255; 'feat' wins when both are there) and 'label' [N]."""
    with np.load(path, allow_pickle=False) as arrays:
        if 'point' not in arrays:
            raise CloudError(f"{path}: no 'point' array (it has "
                             f"{sorted(arrays)})")
        points = np.asarray(arrays['point'])
        colour = next((np.asarray(arrays[k]) for k in ('feat', 'colour')
                       if k in arrays), None)
        labels = np.asarray(arrays['label']) if 'label' in arrays else None
    if points.ndim != 2 or points.shape[1] != 3:
        raise CloudError(f"{path}: 'point' of shape {points.shape}, "
                         f"expected [N, 3]")
    if labels is not None:
        if labels.dtype.kind not in 'ui':
            raise CloudError(f"{path}: 'label' of type {labels.dtype}, "
                             f"expected integers")
        labels = labels.reshape(-1).astype(np.int32)
    return Cloud(Path(path), 'npz', points.astype(np.float32),
                 None if colour is None else colour.astype(np.float32),
                 labels)
