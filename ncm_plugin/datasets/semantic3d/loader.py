"""``RobustSemantic3D``: the stock Semantic3D loader (reduced-8) for pandas 3 and for
scans converted once to the training grid.

The stock ``Semantic3D`` parses ``<scan>.txt`` and ``<scan>.labels`` with
``pandas.read_csv(delim_whitespace=True)``, which pandas 3 removed, and does it
whole, in every ``get_data`` call, for files of up to ~500 million points.
This subclass reads, in ``dataset_path``:

* scans converted by ``scripts/preprocess_semantic3d.py`` (``<scan>.grid.json``
  and its arrays, see ``convert.py``): already subsampled to the grid,
  loaded in milliseconds;
* raw scans (``<scan>.txt`` with no conversion next to it) at full resolution,
  through the same chunked pandas-3 reader: fine for small files.

Labels: 0 unlabeled (ignored), 1..8 the classes, as stock. Splits as stock:
scans without labels are the test split, labelled scans whose name contains a
``val_files`` entry the validation split. Test predictions go to
``<test_result_folder>/<name>/<scan>.labels`` in the benchmark's submission
format: one label per line for every line of the raw ``.txt``, in its order
(converted scans are expanded through their ``proj.npy``).
"""
import json
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
from open3d._ml3d.datasets.base_dataset import BaseDatasetSplit
from open3d._ml3d.datasets.semantic3d import Semantic3D
from open3d._ml3d.utils import DATASET, make_dir

from ..splits import split_list
from .convert import ScanFiles, output_paths, read_raw_scan, write_label_lines

log = logging.getLogger(__name__)


class Scan(NamedTuple):
    """One scan as the loader sees it; ``grid_size`` is None for a raw text scan."""
    name: str
    points: Path  # <scan>.points.npy or <scan>.txt
    labels: Path | None  # <scan>.labels.npy or <scan>.labels; None for test scans
    proj: Path | None  # <scan>.proj.npy of a converted test scan
    grid_size: float | None


def find_scans(folder):
    """Converted scans (``*.grid.json``) and raw ones (``*.txt`` not converted), by name."""
    folder = Path(folder)
    scans = {}
    for meta_path in sorted(folder.glob('*.grid.json')):
        name = meta_path.name[:-len('.grid.json')]
        meta, paths = json.loads(meta_path.read_text()), output_paths(folder, name)
        scans[name] = Scan(name, paths['points'], paths['labels'] if meta['labelled'] else None,
                           None if meta['labelled'] else paths['proj'], meta['grid_size'])
    for txt in sorted(folder.glob('*.txt')):
        labels = txt.with_suffix('.labels')
        scans.setdefault(txt.stem, Scan(txt.stem, txt, labels if labels.exists() else None,
                                        None, None))
    return [scans[name] for name in sorted(scans)]


class RobustSemantic3D(Semantic3D):
    """Semantic3D from converted grid arrays or raw text, pandas 3; same arguments as stock."""

    def __init__(self, dataset_path, name='RobustSemantic3D', **kwargs):
        if dataset_path is None or not Path(dataset_path).is_dir():
            raise FileNotFoundError(f'RobustSemantic3D dataset_path {dataset_path!r} is not a '
                                    f'folder: give the output of scripts/preprocess_semantic3d.py')
        super().__init__(dataset_path=dataset_path, name=name, **kwargs)
        self.scans = find_scans(dataset_path)
        if not self.scans:
            raise FileNotFoundError(f'{dataset_path}: no converted scan (*.grid.json) and no raw '
                                    f'scan (*.txt); convert the raw scans with '
                                    f'scripts/preprocess_semantic3d.py RAW {dataset_path}')
        grids = sorted({s.grid_size for s in self.scans if s.grid_size is not None})
        raw = [s.name for s in self.scans if s.grid_size is None]
        log.info('%s: %d scans, %d converted at grid %s m, %d raw text', dataset_path,
                 len(self.scans), len(self.scans) - len(raw), grids, len(raw))
        if len(grids) > 1:
            log.warning('%s: scans converted at different grids %s', dataset_path, grids)
        if raw and grids:
            log.warning('%s: raw scans read at full resolution next to converted ones: %s',
                        dataset_path, raw)

    def get_split(self, split):
        return RobustSemantic3DSplit(self, split=split)

    def get_split_list(self, split):
        """Scans of a split (``Scan`` tuples)."""
        def is_val(scan):
            return any(v in scan.name for v in self.cfg.val_files)
        groups = {'test': [s for s in self.scans if s.labels is None],
                  'val': [s for s in self.scans if s.labels is not None and is_val(s)],
                  'train': [s for s in self.scans if s.labels is not None and not is_val(s)]}
        return split_list(groups, split, everything=self.scans)

    def result_path(self, attr):
        return Path(self.cfg.test_result_folder) / self.name / f"{attr['name']}.labels"

    def is_tested(self, attr):
        return self.result_path(attr).exists()

    def save_test_result(self, results, attr):
        """The submission file of a scan: a label 1..8 per raw line, in the raw order."""
        scan = next(s for s in self.scans if s.name == attr['name'])
        pred = np.asarray(results['predict_labels']) + 1
        points = len(np.load(scan.points, mmap_mode='r')) if scan.grid_size else None
        if points is not None and len(pred) != points:
            raise ValueError(f'{len(pred)} predictions for the {points} points of {scan.points}')
        path = self.result_path(attr)
        make_dir(path.parent)
        proj = None if scan.proj is None else np.load(scan.proj, mmap_mode='r')
        write_label_lines(path, pred, index=proj)
        log.info('Saved %s (%d labels)', path, len(pred) if proj is None else len(proj))


class RobustSemantic3DSplit(BaseDatasetSplit):
    """A split of RobustSemantic3D: ``get_data`` returns the stock keys."""

    def __init__(self, dataset, split='training'):
        super().__init__(dataset, split=split)
        log.info('Found %d pointclouds for %s', len(self.path_list), split)

    def __len__(self):
        return len(self.path_list)

    def get_data(self, idx):
        """{'point' [N, 3], 'feat' [N, 3] rgb, 'intensity' [N], 'label' [N] int32 (0 for test)}."""
        scan = self.path_list[idx]
        if scan.grid_size is None:
            values, labels = read_raw_scan(ScanFiles(scan.name, scan.points, scan.labels))
        else:
            values = np.load(scan.points)
            labels = None if scan.labels is None else np.load(scan.labels)
        if labels is None:
            labels = np.zeros(len(values), dtype=np.int32)
        if len(labels) != len(values):
            raise ValueError(f'{scan.labels} has {len(labels)} labels for {len(values)} points '
                             f'in {scan.points}')
        return {'point': values[:, :3], 'feat': values[:, 4:7], 'intensity': values[:, 3],
                'label': labels.astype(np.int32)}

    def get_attr(self, idx):
        scan = self.path_list[idx]
        return {'idx': idx, 'name': scan.name, 'path': str(scan.points), 'split': self.split}


DATASET._register_module(RobustSemantic3D)
