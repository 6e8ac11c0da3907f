"""``LASDataset``: a folder of classified airborne LiDAR tiles (LAS/LAZ,
ASPRS codes) as an Open3D-ML dataset; test predictions come back as
classified copies of the tiles.

On construction every tile of the three splits is converted once to the
training grid (convert.py) into ``<cache_dir>/las_grid<grid>_<digest of the
settings>``, which also holds Open3D-ML's preprocessing cache; a tile whose
file changed is converted again. ``get_data`` then loads arrays.

Splits: ``train_files``, ``val_files`` and ``test_files`` are lists of file
names or glob patterns relative to ``dataset_path`` (``*.las``/``*.laz``);
by default every tile that is neither validation nor test is a training
tile. Labels: 0 ignored (``ignored_label_inds: [0]``), 1..K the classes of
``class_names``, from ``class_map`` (settings.py).
"""
import fnmatch
import logging
from pathlib import Path

import numpy as np
from open3d._ml3d.datasets.base_dataset import BaseDataset, BaseDatasetSplit
from open3d._ml3d.utils import DATASET

from ..splits import SPLITS, split_list
from .convert import conversion_folder, convert_tiles, output_paths
from .las import COLOUR, class_table, labels_to_codes
from .settings import LidarSettings

log = logging.getLogger(__name__)

SUFFIXES = ('.las', '.laz')


def find_tiles(folder):
    """Every .las/.laz file of `folder` (not recursive), sorted; two files
    of one name (a.las, a.laz) are an error: a tile is known by its name."""
    tiles = sorted(p for p in Path(folder).iterdir()
                   if p.is_file() and p.suffix.lower() in SUFFIXES)
    stems = [p.stem for p in tiles]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise ValueError(f"{folder}: several files of the tile {twice[0]!r} "
                         f"(.las and .laz?); keep one")
    return tiles


def select(tiles, patterns, key):
    """The tiles matching any of `patterns` (names or globs); a pattern that
    matches nothing is an error naming `key`."""
    if isinstance(patterns, str):
        raise TypeError(f"dataset.{key} must be a list of file names or "
                        f"patterns, got the string {patterns!r}")
    chosen = []
    for pattern in patterns:
        found = [t for t in tiles if fnmatch.fnmatch(t.name, pattern)
                 or fnmatch.fnmatch(t.stem, pattern)]
        if not found:
            raise FileNotFoundError(f"dataset.{key}: {pattern!r} matches no "
                                    f"LAS/LAZ file of dataset_path")
        chosen += [t for t in found if t not in chosen]
    return chosen


def split_tiles(tiles, train_files, val_files, test_files):
    """{'train': [...], 'val': [...], 'test': [...]}; a tile in two splits
    is an error naming both keys."""
    splits = {'val': select(tiles, val_files, 'val_files'),
              'test': select(tiles, test_files, 'test_files')}
    splits['train'] = (
        select(tiles, train_files, 'train_files') if train_files is not None
        else [t for t in tiles if t not in splits['val'] + splits['test']])
    for one, other in (('train', 'val'), ('train', 'test'), ('val', 'test')):
        both = sorted(t.name for t in set(splits[one]) & set(splits[other]))
        if both:
            raise ValueError(f"dataset.{one}_files and dataset.{other}_files: "
                             f"{both[0]} is in both splits")
    return {key: splits[key] for key in ('train', 'val', 'test')}


class LASDataset(BaseDataset):
    """Airborne LiDAR tiles (LAS/LAZ) with ASPRS classification."""

    def __init__(self, dataset_path, name='LASDataset',
                 cache_dir='./logs/cache', use_cache=False, class_weights=(),
                 ignored_label_inds=(0,), test_result_folder='./test',
                 train_files=None, val_files=(), test_files=(), **kwargs):
        if dataset_path is None or not Path(dataset_path).is_dir():
            raise FileNotFoundError(f"LASDataset dataset_path "
                                    f"{dataset_path!r} is not a folder of "
                                    f"LAS/LAZ tiles")
        super().__init__(dataset_path=dataset_path, name=name,
                         cache_dir=cache_dir, use_cache=use_cache,
                         class_weights=list(class_weights),
                         ignored_label_inds=list(ignored_label_inds),
                         test_result_folder=test_result_folder,
                         train_files=train_files, val_files=list(val_files),
                         test_files=list(test_files), **kwargs)
        self.settings = LidarSettings.from_config(self.cfg)
        self.label_to_names = self.get_label_to_names()
        self.num_classes = self.settings.num_classes
        tiles = find_tiles(dataset_path)
        if not tiles:
            raise FileNotFoundError(f"{dataset_path}: no .las or .laz file")
        self.splits = split_tiles(tiles, train_files, val_files, test_files)
        used = [t for split in self.splits.values() for t in split]
        self.folder = conversion_folder(cache_dir, self.settings)
        self.meta = convert_tiles(used, self.folder, self.settings)
        # Open3D-ML keys its preprocessing cache by the model only: below
        # the settings' own folder, a new class map cannot read stale labels.
        self.cfg.cache_dir = str(self.folder / 'preprocessed')
        self.feature_names = self._feature_names()
        self.feature_columns = slice(0, len(self.feature_names))
        log.info('%s: %s tiles for train/val/test, features %s', dataset_path,
                 '/'.join(str(len(self.splits[k])) for k in SPLITS),
                 self.feature_names)

    def _feature_names(self):
        """The features the model gets, in the converted arrays' column
        order: colour kept when asked for, or with 'auto' when every tile
        has some."""
        names = [m['feature_names'] for m in self.meta.values()]
        with_colour = all(n[-3:] == list(COLOUR) for n in names) and (
            self.settings.colour is True or
            (self.settings.colour == 'auto' and
             all(m['colour_values'] for m in self.meta.values())))
        return list(self.settings.features) + (list(COLOUR) if with_colour
                                               else [])

    def input_settings(self):
        """The resolved settings that shape the model's input (a checkpoint
        stores them: applying the model to new tiles needs the same grid,
        features, scaling, colour use and classes)."""
        return {**self.settings.conversion_key(),
                'class_names': list(self.settings.class_names),
                'feature_names': list(self.feature_names)}

    def display_colours(self, data):
        """[M, 3] colours in 0..1 of a cloud for the comparison's input view:
        its colour when the model gets it, else its intensity in grey
        (stretched between the 1st and 99th percentiles)."""
        feat = np.asarray(data['feat'], dtype=np.float32)
        if self.feature_names[-3:] == list(COLOUR):
            return np.clip(feat[:, -3:], 0, 1)
        if 'intensity' not in self.feature_names:
            return np.full((len(feat), 3), 0.6, dtype=np.float32)
        value = feat[:, self.feature_names.index('intensity')]
        low, high = np.percentile(value, [1, 99])
        grey = np.clip((value - low) / max(high - low, 1e-6), 0, 1)
        return np.repeat(grey[:, None], 3, axis=1)

    def get_label_to_names(self):
        return {0: 'ignored', **{i + 1: name for i, name in
                                 enumerate(self.settings.class_names)}}

    def get_split(self, split):
        return LASDatasetSplit(self, split=split)

    def get_split_list(self, split):
        """Tile paths of a split."""
        return split_list(self.splits, split)

    def result_path(self, attr):
        source = Path(attr['path'])
        return Path(self.cfg.test_result_folder) / self.name / source.name

    def is_tested(self, attr):
        return self.result_path(attr).exists()

    def save_test_result(self, results, attr):
        """The classified copy of a test tile, as `ncm-predict` writes it
        (las_output.py): every original point and field,
        Classification untouched, PredictedClassification, entropy and one
        probability per class, each point taking its grid cell's. Returns
        the [C, C] confusion matrix (rows: label, columns: prediction) over
        the tile's original points whose code the class map knows."""
        from .las_output import write_predictions
        name, source = attr['name'], Path(attr['path'])
        probabilities = np.asarray(results['predict_scores'], dtype=np.float32)
        cells = self.meta[name]['points']
        if len(probabilities) != cells:
            raise ValueError(f"{len(probabilities)} predictions for the {cells} "
                             f"grid cells of {source}")
        # Rows summing to one: the engine's means do.
        probabilities /= np.maximum(probabilities.sum(axis=1, keepdims=True),
                                    1e-12)
        proj = np.load(output_paths(self.folder, name)['proj'], mmap_mode='r')
        classes = self.settings.num_classes
        codes = labels_to_codes(np.arange(1, classes + 1),
                                self.settings.class_map)
        target = self.result_path(attr)
        target.parent.mkdir(parents=True, exist_ok=True)
        report = write_predictions(source, target, proj, probabilities, codes,
                                   list(self.settings.class_names))
        log.info('Saved %s (%d points classified)', target, report['points'])
        label_of = class_table(self.settings.class_map)
        confusion = np.zeros((classes, classes), dtype=np.int64)
        for (code, predicted), count in report['confusion'].items():
            truth = label_of[int(code)]
            if truth > 0:
                confusion[truth - 1, label_of[int(predicted)] - 1] += count
        return confusion


class LASDatasetSplit(BaseDatasetSplit):
    """A split of LASDataset: ``get_data`` returns the stock keys."""

    def __init__(self, dataset, split='training'):
        super().__init__(dataset, split=split)
        log.info('Found %d tiles for %s', len(self.path_list), split)

    def __len__(self):
        return len(self.path_list)

    def get_data(self, idx):
        """{'point' [M, 3] float32 (tile origin at 0), 'feat' [M, F],
        'label' [M] int32}."""
        paths = output_paths(self.dataset.folder, self.path_list[idx].stem)
        return {'point': np.load(paths['points']),
                'feat': np.load(paths['feat'])[:, self.dataset.feature_columns],
                'label': np.load(paths['labels']).astype(np.int32)}

    def get_attr(self, idx):
        path = self.path_list[idx]
        return {'idx': idx, 'name': path.stem, 'path': str(path),
                'split': self.split}


DATASET._register_module(LASDataset)
