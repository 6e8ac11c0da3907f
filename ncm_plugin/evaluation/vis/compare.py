"""One test cloud with its ground truth and the predictions of two runs.

The predictions are the `predictions/<cloud>.npy` files a test run writes
(see evaluation.py): dataset label values, one per point of the cloud as the
dataset's `get_data` returns it.
"""
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..recorder import PREDICTIONS_DIR

# The improvement attribute: value -> (name, colour).
IMPROVEMENT = {
    0: ('both right', (0.80, 0.80, 0.80)),
    1: ('NCM right, baseline wrong', (0.10, 0.70, 0.20)),
    2: ('baseline right, NCM wrong', (0.90, 0.10, 0.10)),
    3: ('both wrong', (0.25, 0.25, 0.25)),
    4: ('unlabeled (ignored)', (0.65, 0.80, 1.00)),
}


class Comparison(NamedTuple):
    """A cloud and what each run predicted; labels are dataset label values."""
    name: str
    points: np.ndarray  # [N, 3] float32
    colors: np.ndarray  # [N, 3] input colours in 0..1
    truth: np.ndarray  # [N] int
    baseline: np.ndarray  # [N] int
    ncm: np.ndarray  # [N] int
    label_to_names: dict
    ignored_label_inds: tuple

    def improvement(self):
        """[N] values of IMPROVEMENT for every point."""
        valid = ~np.isin(self.truth, self.ignored_label_inds)
        base_ok, ncm_ok = self.baseline == self.truth, self.ncm == self.truth
        value = np.select([base_ok & ncm_ok, ncm_ok, base_ok], [0, 1, 2], 3)
        return np.where(valid, value, 4)

    def without(self, hidden_names):
        """The comparison without the points whose ground truth is one of
        `hidden_names` (e.g. the ceiling that hides a room's interior)."""
        hidden = [k for k, v in self.label_to_names.items() if v in hidden_names]
        keep = ~np.isin(self.truth, hidden)
        return self._replace(points=self.points[keep], colors=self.colors[keep],
                             truth=self.truth[keep],
                             baseline=self.baseline[keep], ncm=self.ncm[keep])


def load_dataset(config, dataset_path=None):
    """The dataset of a config file (path or name in configs/) and the
    config's model section."""
    import ncm_plugin  # noqa: F401  (fills the registries)
    from open3d._ml3d.utils import get_module

    from ...config import load_config, resolve_config
    cfg = load_config(resolve_config(config))
    section = dict(cfg['dataset'])
    section.pop('demo_data', None)
    if dataset_path is not None:
        section['dataset_path'] = str(dataset_path)
    dataset = get_module('dataset', section['name'])(**section)
    return dataset, cfg['model']


def find_cloud(split, name):
    """Index of the cloud called `name` in a dataset split."""
    names = [split.get_attr(i)['name'] for i in range(len(split))]
    if name not in names:
        raise KeyError(f"no cloud {name!r} in the {split.split} split; it has "
                       f"{names[:10]}{' ...' if len(names) > 10 else ''}")
    return names.index(name)


def run_predictions(run, name):
    """Label values [N] a test run saved for cloud `name`."""
    run = Path(run)
    found = sorted(run.rglob(f'{PREDICTIONS_DIR}/{name}.npy'))
    if len(found) != 1:
        raise FileNotFoundError(
            f"{run}: expected one {PREDICTIONS_DIR}/{name}.npy below it, found "
            f"{len(found)} (test the run with --split test first)")
    return np.load(found[0])


def input_colors(data, dataset=None):
    """Input colours [N, 3] in 0..1: the dataset's own `display_colours`
    when it has one (LiDAR tiles: intensity), else the first three features
    as RGB, grey when the cloud has none."""
    if hasattr(dataset, 'display_colours'):
        return dataset.display_colours(data)
    feat = data.get('feat')
    if feat is None or np.asarray(feat).shape[1] < 3:
        return np.full((len(data['point']), 3), 0.6, dtype=np.float32)
    feat = np.asarray(feat, dtype=np.float32)[:, :3]
    return np.clip(feat / (255.0 if feat.max() > 1.0 else 1.0), 0, 1)


def load_comparison(dataset, ignored_label_inds, baseline_run, ncm_run, name,
                    split='test'):
    """Comparison of cloud `name` of `split` between two test runs."""
    split_data = dataset.get_split(split)
    data = split_data.get_data(find_cloud(split_data, name))
    baseline, ncm = (run_predictions(r, name) for r in (baseline_run, ncm_run))
    for run, pred in ((baseline_run, baseline), (ncm_run, ncm)):
        if len(pred) != len(data['point']):
            raise ValueError(f"{run}: {len(pred)} predictions for the "
                             f"{len(data['point'])} points of {name}")
    return Comparison(name, np.asarray(data['point'][:, :3], dtype=np.float32),
                      input_colors(data, dataset),
                      np.asarray(data['label']).astype(np.int64).reshape(-1),
                      baseline.astype(np.int64), ncm.astype(np.int64),
                      dataset.get_label_to_names(), tuple(ignored_label_inds))


def class_lut(label_to_names):
    """Open3D-ML's LabelLUT of the dataset's classes (its default colours)."""
    from open3d.ml.vis import LabelLUT
    return LabelLUT(label_to_names)


def improvement_lut():
    from open3d.ml.vis import LabelLUT
    lut = LabelLUT()
    for value, (name, color) in IMPROVEMENT.items():
        lut.add_label(name, value, list(color))
    return lut


def label_colours(labels, lut):
    """[N] label values -> [N, 3] colours (0..1) of a LabelLUT; grey for a
    value the LUT does not know."""
    values = sorted(lut.labels)
    table = np.array([lut.labels[v].color for v in values], dtype=np.float64)
    index = np.searchsorted(values, labels)
    index = np.clip(index, 0, len(values) - 1)
    known = np.asarray(values)[index] == labels
    return np.where(known[:, None], table[index], 0.5)


def view_names(names=('baseline', 'NCM')):
    """The views of a comparison, in order; `names` title the two runs."""
    return ('input', 'ground truth', *names, 'improvement')


def view_colours(comparison, names=('baseline', 'NCM')):
    """{view: colours [N, 3] in 0..1}: the input colours, then ground truth,
    both runs' predictions in the dataset's LabelLUT colours, and the
    improvement attribute in IMPROVEMENT's colours."""
    lut = class_lut(comparison.label_to_names)
    colours = (comparison.colors,
               label_colours(comparison.truth, lut),
               label_colours(comparison.baseline, lut),
               label_colours(comparison.ncm, lut),
               label_colours(comparison.improvement(), improvement_lut()))
    return dict(zip(view_names(names), colours))


def view_legend(comparison, view):
    """[(name, colour)] of what `view` shows: the classes present in the
    ground truth or either prediction for a label view, the improvement
    values for the improvement view, nothing for the input colours."""
    if view == 'input':
        return []
    if view == 'improvement':
        return list(IMPROVEMENT.values())
    lut = class_lut(comparison.label_to_names)
    present = set(np.unique(np.concatenate(
        [comparison.truth, comparison.baseline, comparison.ncm])).tolist())
    return [(label.name, tuple(label.color)) for value, label in
            sorted(lut.labels.items()) if value in present]
