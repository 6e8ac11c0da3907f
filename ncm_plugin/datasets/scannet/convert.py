"""Raw ScanNet v2 scans -> the per-scene arrays that Open3D-ML's Scannet loader reads.

Raw layout (the official download), one folder per scan:

    RAW/scans/<scene>/<scene>_vh_clean_2.ply                mesh: vertices x y z red green blue (alpha)
    RAW/scans/<scene>/<scene>_vh_clean_2.labels.ply         same vertices, + 'label' = NYU40 id
    RAW/scans/<scene>/<scene>_vh_clean.aggregation.json     objects: segment ids + category text
    RAW/scans/<scene>/<scene>_vh_clean_2.0.010000.segs.json over-segmentation: a segment id per vertex
    RAW/scans/<scene>/<scene>.txt                           meta data, 'axisAlignment = 16 numbers'
    RAW/scans_test/<scene>/<scene>_vh_clean_2.ply           test scans: the mesh only

Output, flat in OUT (the stock loader's layout, as Open3D-ML's
scripts/preprocess_scannet.py writes it):

    <scene>_vert.npy      [N, 6] float32  x y z r g b (axis-aligned when the meta file says how)
    <scene>_sem_label.npy [N] int32       NYU40 id per vertex (0 = unannotated)
    <scene>_ins_label.npy [N] int32       instance per vertex, objectId + 1 (0 = none)
    <scene>_bbox.npy      [K, 7] float64  axis-aligned box cx cy cz dx dy dz nyu40 of every
                                          instance of the 18 detection classes
    scannetv2_{train,val,test}.txt        the split lists used, for ScanNet20

Test scenes get ``_vert.npy`` only. The official split lists (1201 train, 312
val, 100 test scenes) decide which scans are converted and with which files;
a scene is complete once its ``_vert.npy`` exists (written last, atomically).
"""
import csv
import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from ..atomic import save_npy_atomic
from ..ply import PlyError, read_element
from .loader import STOCK_LISTS, read_scene_list, split_list_path

log = logging.getLogger(__name__)

SPLITS = ('train', 'val', 'test')
SCANS_DIR = {'train': 'scans', 'val': 'scans', 'test': 'scans_test'}
MESH = '{}_vh_clean_2.ply'
LABELS = '{}_vh_clean_2.labels.ply'
SEGMENTS = '{}_vh_clean_2.0.010000.segs.json'
# Both aggregations of the download index the same 0.010000 segments.
AGGREGATIONS = ('{}_vh_clean.aggregation.json', '{}.aggregation.json')
META = '{}.txt'
LABEL_MAP = STOCK_LISTS / 'scannetv2-labels.combined.tsv'
# NYU40 ids of the stock loader's 18 detection classes: the only boxes it reads.
DETECTION_IDS = np.array([3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39])


class ConversionError(ValueError):
    """Scenes that could not be converted; the message names each file."""


class RawScene(NamedTuple):
    name: str
    split: str
    folder: Path

    @property
    def labelled(self):
        return self.split != 'test'

    def file(self, pattern):
        return self.folder / pattern.format(self.name)


class SceneResult(NamedTuple):
    scene: RawScene
    vertices: int  # 0 when skipped (already converted) or failed
    error: str | None = None


class ConversionReport(NamedTuple):
    written: list  # scene names
    cached: list
    missing: dict  # split -> listed scenes absent from RAW


# -- split lists ------------------------------------------------------------
def load_split_lists(train=None, val=None, test=None):
    """{split: [scene]} from the given list files, Open3D-ML's official copies by default.

    Raises ValueError when a scene is in two lists.
    """
    paths = dict(zip(SPLITS, (train, val, test)))
    lists = {s: read_scene_list(p or split_list_path(STOCK_LISTS, s)) for s, p in paths.items()}
    seen = {}
    for split, names in lists.items():
        for name in set(names) & set(seen):
            raise ValueError(f'scene {name} is in both the {seen[name]} and the {split} list')
        seen.update(dict.fromkeys(names, split))
    return lists


def find_scenes(raw, lists):
    """Listed scenes present in RAW, and {split: listed scenes absent}."""
    raw = Path(raw)
    if not any((raw / d).is_dir() for d in set(SCANS_DIR.values())):
        raise FileNotFoundError(f'{raw}: no scans/ or scans_test/ folder: give the folder of the '
                                f'ScanNet v2 download that holds them')
    found, missing = [], {}
    for split, names in lists.items():
        folder = raw / SCANS_DIR[split]
        present = [n for n in names if (folder / n).is_dir()]
        found += [RawScene(n, split, folder / n) for n in present]
        missing[split] = sorted(set(names) - set(present))
    listed = {n for names in lists.values() for n in names}
    for scans in sorted(set(SCANS_DIR.values())):
        extra = sorted(p.name for p in (raw / scans).glob('scene*') if p.name not in listed)
        if extra:
            log.warning('%s: %d scans in no split list are not converted: %s', raw / scans,
                        len(extra), ' '.join(extra[:5]) + (' ...' if len(extra) > 5 else ''))
    return found, missing


# -- raw files ----------------------------------------------------------------
def read_mesh_vertices(path):
    """``[N, 6] float32`` x y z red green blue of a ScanNet mesh (colours 0..255)."""
    vertex = read_element(path, 'vertex')
    fields = ('x', 'y', 'z', 'red', 'green', 'blue')
    absent = [f for f in fields if f not in vertex.dtype.names]
    if absent:
        raise PlyError(f'{path}: vertex element has no {absent} properties')
    return np.stack([vertex[f].astype(np.float32) for f in fields], axis=1)


def read_vertex_labels(path):
    """``[N] int32`` NYU40 id per vertex, the 'label' property of ``*_vh_clean_2.labels.ply``."""
    vertex = read_element(path, 'vertex')
    if 'label' not in vertex.dtype.names:
        raise PlyError(f"{path}: vertex element has no 'label' property")
    return vertex['label'].astype(np.int32)


def read_segments(path):
    """``[N] int64`` segment id per vertex (``segIndices``)."""
    data = _read_json(path)
    if 'segIndices' not in data:
        raise ValueError(f"{path}: no 'segIndices' key")
    return np.asarray(data['segIndices'], dtype=np.int64)


def read_aggregation(path):
    """Objects ``[(object_id, category, segments [S] int64)]`` of an aggregation file."""
    data = _read_json(path)
    try:
        return [(int(g['objectId']), str(g['label']), np.asarray(g['segments'], dtype=np.int64))
                for g in data['segGroups']]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f'{path}: malformed segGroups ({error!r})') from None


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f'{path}: not valid JSON (truncated file?): {error}') from None


def read_label_map(path=LABEL_MAP):
    """{raw category text: NYU40 id} from ScanNet's scannetv2-labels.combined.tsv."""
    with open(path, newline='') as f:
        return {row['raw_category']: int(row['nyu40id']) for row in csv.DictReader(f, delimiter='\t')}


def read_axis_alignment(path):
    """The 4x4 ``axisAlignment`` matrix of a scan's meta file, or None when it has none."""
    if not Path(path).exists():
        return None
    for line in Path(path).read_text().splitlines():
        key, _, value = line.partition('=')
        if key.strip() == 'axisAlignment':
            numbers = np.array(value.split(), dtype=np.float64)
            if numbers.size != 16:
                raise ValueError(f'{path}: axisAlignment has {numbers.size} numbers, not 16')
            return numbers.reshape(4, 4)
    return None


# -- arrays -------------------------------------------------------------------
def instance_ids(segments, objects):
    """``[N] int32`` objectId + 1 of each vertex (0 = in no object).

    segments [N] segment id per vertex; objects [(object_id, category, segs)].
    A segment listed by two objects goes to the later one, as in Open3D-ML.
    """
    if not objects:
        return np.zeros(len(segments), dtype=np.int32)
    segs = np.concatenate([s for _, _, s in objects])
    owner = np.repeat([o + 1 for o, _, _ in objects], [len(s) for _, _, s in objects])
    order = np.argsort(segs, kind='stable')
    segs, owner = segs[order], owner[order]
    last = np.searchsorted(segs, segments, side='right') - 1  # last object listing it
    hit = (last >= 0) & (segs[np.maximum(last, 0)] == segments)
    return np.where(hit, owner[np.maximum(last, 0)], 0).astype(np.int32)


def instance_boxes(xyz, instance, nyu40_of):
    """``[K, 7]`` cx cy cz dx dy dz nyu40 of the instances whose class is a detection class.

    xyz [N, 3], instance [N] (0 = none), nyu40_of {instance: NYU40 id}; boxes
    in increasing instance order.
    """
    keep = instance > 0
    ids = np.unique(instance[keep])
    if len(ids) == 0:
        return np.zeros((0, 7))
    order = np.argsort(instance[keep], kind='stable')
    points = xyz[keep][order]
    starts = np.searchsorted(instance[keep][order], ids)
    low, high = np.minimum.reduceat(points, starts), np.maximum.reduceat(points, starts)
    nyu40 = np.array([nyu40_of.get(int(i), 0) for i in ids], dtype=np.float64)
    boxes = np.c_[(low + high) / 2, high - low, nyu40]
    return boxes[np.isin(nyu40, DETECTION_IDS)]


def scene_arrays(scene, label_map):
    """{suffix: array} of one scene, as written to ``OUT/<scene><suffix>``; ``_vert.npy``
    comes last, as it marks a complete scene."""
    vert = read_mesh_vertices(scene.file(MESH))
    align = read_axis_alignment(scene.file(META))
    if align is not None:
        vert[:, :3] = (vert[:, :3] @ align[:3, :3].T + align[:3, 3]).astype(np.float32)
    if not scene.labelled:
        return {'_vert.npy': vert}
    labels = read_vertex_labels(scene.file(LABELS))
    segments = read_segments(scene.file(SEGMENTS))
    aggregation = next((scene.file(p) for p in AGGREGATIONS if scene.file(p).exists()),
                       scene.file(AGGREGATIONS[0]))
    objects = read_aggregation(aggregation)
    for path, count in ((scene.file(LABELS), len(labels)), (scene.file(SEGMENTS), len(segments))):
        if count != len(vert):
            raise ValueError(f'{path} has {count} vertices but {scene.file(MESH)} has {len(vert)}')
    unknown = sorted({c for _, c, _ in objects if c not in label_map})
    if unknown:
        log.warning('%s: categories not in %s, left without box: %s', aggregation,
                    LABEL_MAP.name, unknown)
    instance = instance_ids(segments, objects)
    nyu40_of = {o + 1: label_map.get(c, 0) for o, c, _ in objects}
    return {'_sem_label.npy': labels, '_ins_label.npy': instance,
            '_bbox.npy': instance_boxes(vert[:, :3], instance, nyu40_of), '_vert.npy': vert}


# -- writing ------------------------------------------------------------------
def is_converted(scene, out):
    return (Path(out) / f'{scene.name}_vert.npy').exists()


def convert_scene(scene, out, label_map):
    """Write one scene's arrays into ``out``; errors come back as text, naming the file."""
    try:
        arrays = scene_arrays(scene, label_map)
    except (PlyError, ValueError, FileNotFoundError) as error:
        return SceneResult(scene, 0, str(error))
    for suffix, array in arrays.items():
        save_npy_atomic(array, Path(out) / f'{scene.name}{suffix}')
    return SceneResult(scene, len(arrays['_vert.npy']))


def _convert_star(args):
    return convert_scene(*args)


def convert_scannet(raw, out, train_list=None, val_list=None, test_list=None, workers=None,
                    overwrite=False):
    """Convert the listed scans of ``raw`` missing from ``out``; returns a ConversionReport.

    Raises ConversionError, after converting every other scene, when some
    scenes failed (a truncated ply, a label file of another length, ...).
    """
    lists = load_split_lists(train_list, val_list, test_list)
    scenes, missing = find_scenes(raw, lists)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split, names in lists.items():
        path = split_list_path(out, split)
        if not path.exists() or read_scene_list(path) != names:
            path.write_text(''.join(f'{n}\n' for n in names))
    todo = [s for s in scenes if overwrite or not is_converted(s, out)]
    cached = [s.name for s in scenes if s not in todo]
    todo.sort(key=lambda s: s.file(MESH).stat().st_size if s.file(MESH).exists() else 0,
              reverse=True)  # biggest first: the pool does not wait on one at the end
    label_map = read_label_map()
    jobs = [(s, out, label_map) for s in todo]
    workers = os.cpu_count() if workers is None else workers
    progress = dict(total=len(jobs), desc='ScanNet scenes', unit='scene', disable=not jobs)
    if workers <= 1 or len(jobs) <= 1:
        results = [_convert_star(j) for j in tqdm(jobs, **progress)]
    else:
        context = multiprocessing.get_context('fork')  # workers use numpy and json only
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
            results = list(tqdm(pool.map(_convert_star, jobs), **progress))
    failed = [r for r in results if r.error]
    written = sorted(r.scene.name for r in results if not r.error)
    for split in SPLITS:
        if missing[split]:
            log.info('%s: %d of %d %s scenes are not in %s', raw, len(missing[split]),
                     len(lists[split]), split, SCANS_DIR[split])
    log.info('ScanNet %s -> %s: %d scenes converted, %d already converted, %d failed', raw, out,
             len(written), len(cached), len(failed))
    if failed:
        raise ConversionError(f'{len(failed)} ScanNet scene(s) could not be converted:\n' +
                              '\n'.join(f'  {r.scene.name}: {r.error}' for r in failed))
    return ConversionReport(written, sorted(cached), missing)
