"""``ScanNet20``: the stock Scannet loader with the 20 classes of the ScanNet v2
semantic segmentation benchmark (the classes of the NCM paper's Table 3).

The stock ``Scannet`` is a detection loader: it maps the NYU40 ids of
``<scene>_sem_label.npy`` to its 18 box classes and turns wall, floor and
every other id into -1 (as floats). Here label 0 is unlabeled (every NYU40 id
outside the benchmark's 20) and 1..20 are the classes, so a model uses
``lbl_values: [0..20]``, ``ignored_label_inds: [0]`` and ``num_classes: 20``.

Files (written by ``convert.py``, the same as Open3D-ML's own
scripts/preprocess_scannet.py): ``<scene>_vert.npy [N, 6]`` x y z r g b,
``<scene>_sem_label.npy [N]`` NYU40 ids, ``<scene>_ins_label.npy [N]``,
``<scene>_bbox.npy [K, 7]``; test scenes have ``_vert.npy`` only. The splits
come from ``scannetv2_{train,val,test}.txt`` in ``dataset_path`` when the
conversion wrote them there, else from Open3D-ML's copy of the official lists.
Test predictions are written in the benchmark's submission format: one
``<scene>.txt`` per scene, one NYU40 id per line per mesh vertex.
"""
import logging
from pathlib import Path

import numpy as np
from open3d._ml3d.datasets import scannet as stock_scannet
from open3d._ml3d.datasets.scannet import Scannet, ScannetSplit
from open3d._ml3d.utils import DATASET, make_dir

from ..splits import SPLITS, split_list

log = logging.getLogger(__name__)

# The benchmark's classes: (NYU40 id, name); label i + 1 is CLASSES[i].
CLASSES = ((1, 'wall'), (2, 'floor'), (3, 'cabinet'), (4, 'bed'), (5, 'chair'), (6, 'sofa'),
           (7, 'table'), (8, 'door'), (9, 'window'), (10, 'bookshelf'), (11, 'picture'),
           (12, 'counter'), (14, 'desk'), (16, 'curtain'), (24, 'refrigerator'),
           (28, 'shower curtain'), (33, 'toilet'), (34, 'sink'), (36, 'bathtub'),
           (39, 'otherfurniture'))
NYU40_IDS = np.array([nyu for nyu, _ in CLASSES])
UNLABELED = 0
# Open3D-ML's copy of the official lists (1201 / 312 / 100 scenes).
STOCK_LISTS = Path(stock_scannet.__file__).parent / '_resources' / 'scannet'


def split_list_path(folder, split):
    """``folder/scannetv2_<split>.txt``: the official list's file name."""
    return Path(folder) / f'scannetv2_{split}.txt'


def read_scene_list(path):
    """Scene names of a split list, one per line (blank lines ignored)."""
    return Path(path).read_text().split()


def nyu40_to_label(nyu40):
    """NYU40 ids ``[N]`` (any integer type) -> benchmark labels ``[N] int32`` in 0..20."""
    nyu40 = np.asarray(nyu40)
    table = np.zeros(NYU40_IDS.max() + 1, dtype=np.int32)
    table[NYU40_IDS] = np.arange(1, len(NYU40_IDS) + 1)
    known = (nyu40 >= 0) & (nyu40 < len(table))
    return np.where(known, table[np.where(known, nyu40, 0)], UNLABELED).astype(np.int32)


def label_to_nyu40(labels):
    """Benchmark labels ``[N]`` in 1..20 -> NYU40 ids ``[N] int32`` (the submission format)."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 1 or labels.max() > len(NYU40_IDS)):
        raise ValueError(f'benchmark labels must be in 1..{len(NYU40_IDS)}, got '
                         f'{labels.min()}..{labels.max()}')
    return NYU40_IDS[labels - 1].astype(np.int32)


class ScanNet20(Scannet):
    """Scannet with the 20 benchmark classes; same arguments as ``Scannet`` plus
    ``test_result_folder`` (where the submission files go)."""

    def __init__(self, dataset_path, name='ScanNet20', test_result_folder='./test', **kwargs):
        if dataset_path is None or not Path(dataset_path).is_dir():
            raise FileNotFoundError(f'ScanNet20 dataset_path {dataset_path!r} is not a folder: '
                                    f'give the output folder of scripts/preprocess_scannet.py')
        super().__init__(dataset_path=dataset_path, name=name,
                         test_result_folder=test_result_folder, **kwargs)
        self.num_classes = len(CLASSES)
        self.label_to_names = self.get_label_to_names()
        self.train_scenes, self.val_scenes, self.test_scenes = self._split_scenes()

    def _split_scenes(self):
        """Scene paths (``dataset_path/<scene>``, sorted) of train, val and test."""
        root = Path(self.cfg.dataset_path)
        scenes = sorted(p.name[:-len('_vert.npy')] for p in root.glob('scene*_vert.npy'))
        if not scenes:
            raise FileNotFoundError(f'{root}: no scene*_vert.npy file: convert the raw ScanNet '
                                    f'scans first with scripts/preprocess_scannet.py RAW {root}')
        lists = {}
        for split in SPLITS:
            path = split_list_path(root, split)
            if not path.exists():
                path = split_list_path(STOCK_LISTS, split)
            lists[split] = set(read_scene_list(path))
        log.info('ScanNet20 splits from %s', 'dataset_path' if split_list_path(
            root, 'train').exists() else f"Open3D-ML's official lists in {STOCK_LISTS}")
        unlisted = [s for s in scenes if not any(s in names for names in lists.values())]
        if unlisted:
            log.warning('%s: %d scenes in no split list are not used: %s', root, len(unlisted),
                        ' '.join(unlisted[:5]) + (' ...' if len(unlisted) > 5 else ''))
        return tuple([str(root / s) for s in scenes if s in lists[split]] for split in SPLITS)

    @staticmethod
    def get_label_to_names():
        """{0: 'unlabeled', 1: 'wall', ..., 20: 'otherfurniture'}."""
        return {UNLABELED: 'unlabeled', **{i + 1: name for i, (_, name) in enumerate(CLASSES)}}

    def get_split(self, split):
        return ScanNet20Split(self, split=split)

    def get_split_list(self, split):
        return split_list({'train': self.train_scenes, 'val': self.val_scenes,
                           'test': self.test_scenes}, split)

    def read_label(self, scene):
        """Stock boxes and instances, and the 20-class labels ``[N] int32`` of ``scene``."""
        objects, _, instance = super().read_label(scene)
        return objects, nyu40_to_label(np.load(scene + '_sem_label.npy')), instance

    def result_path(self, attr):
        return Path(self.cfg.test_result_folder) / self.name / f"{attr['name']}.txt"

    def is_tested(self, attr):
        return self.result_path(attr).exists()

    def save_test_result(self, results, attr):
        """``<test_result_folder>/<name>/<scene>.txt``: one NYU40 id per line per vertex."""
        path = self.result_path(attr)
        make_dir(path.parent)
        nyu40 = label_to_nyu40(np.asarray(results['predict_labels']) + 1)
        np.savetxt(path, nyu40, fmt='%d')
        log.info('Saved %s (%d vertices)', path, len(nyu40))


class ScanNet20Split(ScannetSplit):
    """ScannetSplit that also reads test scenes, which have no label files."""

    def get_data(self, idx):
        scene = self.path_list[idx]
        if Path(scene + '_sem_label.npy').exists():
            data = super().get_data(idx)
        else:
            vert = self.dataset.read_lidar(scene + '_vert.npy')
            zeros = np.zeros(len(vert), dtype=np.int32)
            data = {'point': vert[:, :3], 'feat': vert[:, 3:], 'calib': None,
                    'bounding_boxes': [], 'label': zeros, 'instance': zeros}
        if len(data['label']) != len(data['point']):
            raise ValueError(f'{scene}_sem_label.npy has {len(data["label"])} labels for '
                             f'{len(data["point"])} vertices in {scene}_vert.npy')
        return data


DATASET._register_module(ScanNet20)
