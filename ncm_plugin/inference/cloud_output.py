"""Classified copies of the clouds of inference/clouds.py, written atomically.

    PLY input (ply, scannet_mesh) -> a PLY of the same name: every vertex
        property of the input, in its order and type, then `label` (int,
        the predicted dataset label) and one float property per class, its
        probability, named by `property_names` (snake_case class names:
        'shower curtain' -> shower_curtain); the input's triangles when it
        was a binary triangle mesh. An input property of one of these names
        is kept and the new one is written as `predicted_<name>`. Binary
        little endian, whatever the input's format.
    any other input -> <name>.npz: 'point' [N, 3] float32 (the points, in
        the order of the other arrays: for a room folder the order of its
        sorted Annotations files), 'label' [N] int32, 'probabilities'
        [N, C] float32, 'class_names' [C] str.

Both hold the prediction's provenance (the checkpoint and settings, JSON):
the PLY as a header comment `ncm_provenance {...}`, the .npz as the array
'provenance'; `read_provenance` gives it back, to skip finished outputs.
"""
import logging
import re
from pathlib import Path

import numpy as np

from ..datasets.atomic import atomic_path
from ..datasets.ply import MAX_HEADER_BYTES, write_ply

log = logging.getLogger(__name__)

PROVENANCE_COMMENT = 'ncm_provenance'
PLY_KINDS = ('ply', 'scannet_mesh')
PREFIX = 'predicted_'


def output_name(path):
    """The output's file name for input `path`: a PLY keeps its name, a
    room folder Area_N/<room> gives Area_N_<room>.npz (the S3DIS cache's
    name, unique over a dataset; <room>.npz outside an Area_N folder), any
    other file <stem>.npz."""
    path = Path(path)
    if path.is_dir():
        parent = path.resolve().parent.name
        return (f'{parent}_{path.name}.npz' if parent.startswith('Area_')
                else f'{path.name}.npz')
    if path.suffix.lower() == '.ply':
        return path.name
    return f'{path.stem}.npz'


def property_names(class_names):
    """[C] PLY property names of the class probabilities: snake_case class
    names; two classes of one name are a ValueError."""
    names = [re.sub(r'[^0-9a-z]+', '_', str(c).lower()).strip('_') or 'class'
             for c in class_names]
    names = [f'class_{n}' if n[0].isdigit() else n for n in names]
    if len(set(names)) != len(names):
        raise ValueError(f"classes {list(class_names)} give the property "
                         f"names {names}, some twice")
    return names


def write_predictions(cloud, target, labels, probabilities, class_names,
                      provenance=None):
    """Write the classified copy of `cloud` at `target` (a PLY for PLY
    inputs, else an .npz); labels [N], probabilities [N, C] in the cloud's
    point order."""
    n = len(cloud.points)
    if labels.shape != (n,) or probabilities.shape != (n, len(class_names)):
        raise ValueError(f"{cloud.path}: {labels.shape} labels and "
                         f"{probabilities.shape} probabilities for {n} "
                         f"points and {len(class_names)} classes")
    if cloud.kind in PLY_KINDS:
        write_ply_predictions(cloud, target, labels, probabilities,
                              class_names, provenance)
    else:
        write_npz_predictions(cloud, target, labels, probabilities,
                              class_names, provenance)


def write_ply_predictions(cloud, target, labels, probabilities, class_names,
                          provenance=None):
    """The input's vertices + `label` + one probability per class (module
    docstring), and its triangles, at `target`."""
    vertices = cloud.vertices
    taken = set(vertices.dtype.names)
    new = ['label'] + property_names(class_names)
    renamed = [PREFIX + name if name in taken else name for name in new]
    if renamed != new:
        log.info("%s: the input has properties %s; the prediction's are "
                 "written as %s", cloud.path, sorted(taken & set(new)),
                 [r for r, n in zip(renamed, new) if r != n])
    dtype = vertices.dtype.descr + [(renamed[0], '<i4')] + \
        [(name, '<f4') for name in renamed[1:]]
    out = np.empty(len(vertices), dtype=dtype)
    for name in vertices.dtype.names:
        out[name] = vertices[name]
    out[renamed[0]] = labels
    for column, name in enumerate(renamed[1:]):
        out[name] = probabilities[:, column]
    comments = () if provenance is None else (
        f'{PROVENANCE_COMMENT} {provenance}',)
    with atomic_path(target) as tmp:
        write_ply(tmp, out, cloud.faces, comments=comments)


def write_npz_predictions(cloud, target, labels, probabilities, class_names,
                          provenance=None):
    """'point', 'label', 'probabilities', 'class_names' (and 'provenance')
    at `target`."""
    arrays = {'point': np.asarray(cloud.points, dtype=np.float32),
              'label': np.asarray(labels, dtype=np.int32),
              'probabilities': np.asarray(probabilities, dtype=np.float32),
              'class_names': np.array([str(c) for c in class_names])}
    if provenance is not None:
        arrays['provenance'] = np.array(provenance)
    with atomic_path(target) as tmp, open(tmp, 'wb') as f:
        np.savez(f, **arrays)


def read_provenance(path):
    """The provenance `write_predictions` stored in `path`, or None (an
    output without one); a missing file is a FileNotFoundError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix.lower() == '.npz':
        try:
            with np.load(path, allow_pickle=False) as arrays:
                return (str(arrays['provenance']) if 'provenance' in arrays
                        else None)
        except (OSError, ValueError):
            return None  # not an .npz it wrote: classify again
    with open(path, 'rb') as f:
        head = f.read(MAX_HEADER_BYTES)
    end = head.find(b'\nend_header')
    for line in head[:max(end, 0)].decode('utf-8', 'replace').splitlines():
        words = line.split(maxsplit=2)
        if words[:2] == ['comment', PROVENANCE_COMMENT] and len(words) == 3:
            return words[2]
    return None

