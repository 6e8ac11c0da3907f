"""What a test run leaves in its log folder: the prediction of every test
cloud and results.json/.md/.csv (see results.py).

`TestRecorder` is fed by the pipeline each time the stock test loop finishes
a cloud. Predictions are saved as `predictions/<cloud>.npy`, dataset label
values [N], one per point of the cloud as the dataset's `get_data` returns it
(the original point order of the converted data: S3DIS the room's annotation
files concatenated in sorted order, ScanNet the mesh vertices, Semantic3D the
grid cells of a converted scan, whose raw-line order the dataset's own
submission file restores).
"""
import json
import logging
from pathlib import Path

import numpy as np

from .results import (benchmark_of, class_names, confusion_matrix, label_values,
                      scores, write_results)

log = logging.getLogger(__name__)

PREDICTIONS_DIR = 'predictions'


def labels_to_indices(labels, values):
    """Dataset labels [N] -> class indices [N], -1 for ignored labels."""
    lookup = np.full(max(int(values.max()), int(np.max(labels, initial=0))) + 1,
                     -1, dtype=np.int64)
    lookup[values] = np.arange(len(values))
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError(f"negative label {labels.min()}")
    return lookup[labels]


class TestRecorder:
    """Collects the test predictions of one run and writes its results."""

    def __init__(self, dataset, model_cfg, folder):
        self.folder = Path(folder)
        self.names = class_names(dataset.get_label_to_names(),
                                 model_cfg.ignored_label_inds)
        if len(self.names) != model_cfg.num_classes:
            raise ValueError(
                f"the dataset has {len(self.names)} classes besides "
                f"ignored_label_inds={list(model_cfg.ignored_label_inds)}, the "
                f"model num_classes={model_cfg.num_classes}")
        self.values = label_values(dataset.get_label_to_names(),
                                   model_cfg.ignored_label_inds)
        self.dataset_name = dataset.name
        self.benchmark = benchmark_of(dataset)
        self.confusion = np.zeros((len(self.names),) * 2, dtype=np.int64)
        self.clouds, self.labelled = [], []
        (self.folder / PREDICTIONS_DIR).mkdir(parents=True, exist_ok=True)

    def add(self, split, cloud_id, predicted, confusion=None):
        """predicted: [N] class indices of every point of cloud `cloud_id`;
        confusion: [C, C] of the cloud's original points where the dataset
        gives its points subsampled (LAS tiles: the classified copy counts
        every point of the file), instead of the count over `predicted`."""
        name = split.get_attr(cloud_id)['name']
        if name in self.clouds:  # the stock loop may finish a cloud twice
            return
        data = split.get_data(cloud_id)
        predicted = np.asarray(predicted).astype(np.int64)
        if len(predicted) != len(data['point']):
            raise ValueError(f"{len(predicted)} predictions for the "
                             f"{len(data['point'])} points of {name}")
        np.save(self.folder / PREDICTIONS_DIR / f'{name}.npy',
                self.values[predicted].astype(np.int32))
        self.clouds.append(name)
        if confusion is not None:
            if np.asarray(confusion).sum():
                self.confusion += np.asarray(confusion, dtype=np.int64)
                self.labelled.append(name)
            return
        truth = labels_to_indices(data['label'], self.values)
        if (truth >= 0).any():
            self.confusion += confusion_matrix(truth, predicted, len(self.names))
            self.labelled.append(name)

    def write(self, extra=None):
        """results.* in the folder; returns the results dict (with `extra`,
        e.g. the test votes, recorded in it)."""
        if self.labelled:
            results = scores(self.confusion, self.names, self.benchmark)
        else:
            results = {'miou': None, 'overall_accuracy': None,
                       'per_class_iou': {}, 'classes': self.names,
                       'present_classes': [], 'num_points': 0}
        order = [self.names.index(c) for c in results['classes']]
        results.update(
            dataset=self.dataset_name, benchmark=self.benchmark, scale='percent',
            num_clouds=len(self.clouds), clouds=self.clouds,
            labelled_clouds=self.labelled,
            predictions=str(self.folder / PREDICTIONS_DIR),
            confusion_matrix=self.confusion[np.ix_(order, order)].tolist(),
            **(extra or {}))
        if not self.labelled:
            log.info("No test cloud has labels: predictions saved in %s, no "
                     "IoU (submit them to the benchmark).",
                     self.folder / PREDICTIONS_DIR)
            (self.folder / 'results.json').write_text(
                json.dumps(results, indent=2) + '\n')
            return results
        paths = write_results(self.folder, results)
        width = max(map(len, results['classes']))
        lines = [f"  {c:<{width}}  {'-' if v is None else f'{v:6.2f}'}"
                 for c, v in results['per_class_iou'].items()]
        lines += [f"  {'mIoU':<{width}}  {results['miou']:6.2f}",
                  f"  {'OA':<{width}}  {results['overall_accuracy']:6.2f}"]
        log.info("Test IoU per class (%%), %d labelled clouds:\n%s\nWritten "
                 "%s", len(self.labelled), "\n".join(lines),
                 ", ".join(map(str, paths)))
        return results
