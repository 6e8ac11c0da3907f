"""Test results the way the paper shows them: per-class IoU in the paper's
column order, mIoU and overall accuracy, as results.json / .md / .csv, and the
comparison table of several runs (the paper's Table 2).

Scale: every figure is a percentage (0-100), like the paper's tables.
A class is *present* when the evaluated clouds hold at least one of its
ground-truth points; its IoU is TP / (TP + FP + FN). Absent classes have no
IoU (null) and mIoU is the mean over the present classes. Overall accuracy is
the fraction of valid points whose predicted class is right.
"""
import csv
import io
import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

RESULTS_FILE = 'results.json'

# Column order of the paper's tables, by benchmark. S3DIS as in the paper's
# Table 1; ScanNet in the benchmark's (alphabetical) order; Semantic3D in
# its label order.
PAPER_CLASS_ORDER = {
    'S3DIS': ('ceiling', 'floor', 'wall', 'beam', 'column', 'window', 'door',
              'chair', 'table', 'bookcase', 'sofa', 'board', 'clutter'),
    'ScanNet': ('bathtub', 'bed', 'bookshelf', 'cabinet', 'chair', 'counter',
                'curtain', 'desk', 'door', 'floor', 'otherfurniture',
                'picture', 'refrigerator', 'shower curtain', 'sink', 'sofa',
                'table', 'toilet', 'wall', 'window'),
    'Semantic3D': ('man-made terrain', 'natural terrain', 'high vegetation',
                   'low vegetation', 'buildings', 'hard scape',
                   'scanning artefacts', 'cars'),
}

# Published mIoU (%), for reference only: never measured here.
PUBLISHED = {
    'S3DIS': (('KPConv deform (published)', 67.1),
              ('NCM-KPConv (published)', 68.29)),
    'ScanNet': (('KPConv deform (published)', 68.4),
                ('NCM-KPConv (published)', 69.0)),
}


def benchmark_of(dataset):
    """'S3DIS', 'ScanNet', 'Semantic3D' (the stock loader subclassed), or the
    dataset's own name."""
    from open3d._ml3d.datasets import S3DIS, Scannet, Semantic3D
    for stock, name in ((S3DIS, 'S3DIS'), (Scannet, 'ScanNet'),
                        (Semantic3D, 'Semantic3D')):
        if isinstance(dataset, stock):
            return name
    return dataset.name


def class_names(label_to_names, ignored_label_inds):
    """Names of the model's classes, in class-index order (labels sorted,
    ignored ones left out, as Open3D-ML's filter_valid_label)."""
    ignored = set(ignored_label_inds)
    return [label_to_names[k] for k in sorted(label_to_names) if k not in ignored]


def label_values(label_to_names, ignored_label_inds):
    """Dataset label value of every class index: [C] int."""
    ignored = set(ignored_label_inds)
    return np.array([k for k in sorted(label_to_names) if k not in ignored])


def paper_order(names, benchmark):
    """Class names in the paper's column order (label order when unknown)."""
    order = PAPER_CLASS_ORDER.get(benchmark)
    if order is None or sorted(order) != sorted(names):
        return list(names)
    return list(order)


def confusion_matrix(true, pred, num_classes):
    """Counts [C, C], rows = ground truth, columns = prediction.

    true, pred: [N] class indices; points with true < 0 are left out.
    """
    true, pred = np.asarray(true).ravel(), np.asarray(pred).ravel()
    if true.shape != pred.shape:
        raise ValueError(f"{true.size} labels for {pred.size} predictions")
    keep = true >= 0
    if keep.any() and (pred[keep].min() < 0 or pred[keep].max() >= num_classes
                       or true[keep].max() >= num_classes):
        raise ValueError(f"class indices must lie in 0..{num_classes - 1}")
    flat = num_classes * true[keep].astype(np.int64) + pred[keep]
    return np.bincount(flat, minlength=num_classes**2).reshape(
        num_classes, num_classes)


def scores(confusion, names, benchmark=None):
    """The figures of one run from its confusion matrix [C, C] (rows = GT).

    Returns {'miou', 'overall_accuracy', 'per_class_iou' {name: IoU or None},
    'classes' (paper order), 'present_classes', 'num_points'}, in percent.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    if confusion.shape != (len(names), len(names)):
        raise ValueError(f"confusion matrix {confusion.shape} does not match "
                         f"the {len(names)} classes {names}")
    tp = np.diag(confusion)
    gt = confusion.sum(axis=1)
    union = gt + confusion.sum(axis=0) - tp
    present = gt > 0
    iou = np.where(present, 100.0 * tp / np.maximum(union, 1), np.nan)
    total = int(confusion.sum())
    order = paper_order(names, benchmark)
    by_name = dict(zip(names, iou))
    return {
        'miou': float(np.mean(iou[present])) if present.any() else None,
        'overall_accuracy': 100.0 * float(tp.sum()) / total if total else None,
        'per_class_iou': {n: None if np.isnan(by_name[n]) else float(by_name[n])
                          for n in order},
        'classes': order,
        'present_classes': [n for n in order if by_name[n] == by_name[n]],
        'num_points': total,
    }


# -- files ----------------------------------------------------------------
def _cell(value, signed=False):
    if value is None:
        return ''
    return f'{value:+.2f}' if signed else f'{value:.2f}'


def table_rows(results):
    """[(name, source, miou, oa, {class: iou})] -> header and rows of strings."""
    classes = results[0][4].keys()
    header = ['run', 'source', 'mIoU', 'OA', *classes]
    rows = []
    for name, source, miou, oa, ious in results:
        signed = source == 'difference'
        rows.append([name, source, _cell(miou, signed), _cell(oa, signed),
                     *(_cell(ious.get(c), signed) for c in classes)])
    return header, rows


def markdown(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |',
             '|' + '|'.join(' --- ' for _ in header) + '|']
    lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
    return '\n'.join(lines) + '\n'


def csv_text(header, rows):
    out = io.StringIO()
    writer = csv.writer(out, lineterminator='\n')
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def write_results(folder, results):
    """results.json, results.md and results.csv in `folder`; returns paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    header, rows = table_rows([(results.get('name', 'this run'), 'measured',
                                results['miou'], results['overall_accuracy'],
                                results['per_class_iou'])])
    paths = [folder / RESULTS_FILE, folder / 'results.md', folder / 'results.csv']
    paths[0].write_text(json.dumps(results, indent=2) + '\n')
    title = (f"# Test results: {results.get('dataset', '')} "
             f"({results.get('num_clouds', '?')} clouds, "
             f"{results['num_points']} points, IoU in %)\n\n")
    paths[1].write_text(title + markdown(header, rows))
    paths[2].write_text(csv_text(header, rows))
    return paths


def find_results(path):
    """results.json of a run: the file itself, in the folder, or the one
    file below it."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run folder or results file")
    if (path / RESULTS_FILE).is_file():
        return path / RESULTS_FILE
    found = sorted(path.rglob(RESULTS_FILE))
    if len(found) != 1:
        raise FileNotFoundError(
            f"{path}: expected one {RESULTS_FILE} below it, found "
            f"{len(found)}{': ' + ', '.join(map(str, found)) if found else ''}"
            f" (test the run with --split test first, or name the file)")
    return found[0]


def load_results(path):
    """The dict of a results.json; errors name the file and the missing key."""
    path = find_results(path)
    results = json.loads(path.read_text())
    for key in ('miou', 'overall_accuracy', 'per_class_iou'):
        if key not in results:
            raise KeyError(f"{path}: no {key!r} (not a results.json of "
                           f"ncm_plugin)")
    if results['miou'] is None:
        raise ValueError(f"{path}: the run's test clouds had no labels, so "
                         f"it has no IoU to compare")
    results['path'] = str(path)
    return results


def comparison(runs, names, published=()):
    """The paper's Table 2: a row per run, then the differences to the first
    run, then (separately, marked) published rows.

    runs: results dicts; names: one per run; published: [(name, miou)].
    Returns (header, rows). Difference rows compare measured runs only.
    """
    if len(runs) != len(names):
        raise ValueError(f"{len(runs)} runs but {len(names)} names")
    classes = list(runs[0]['per_class_iou'])
    for run in runs[1:]:
        if sorted(run['per_class_iou']) != sorted(classes):
            raise ValueError(
                f"{run.get('path')} has classes {list(run['per_class_iou'])}, "
                f"{runs[0].get('path')} has {classes}: not the same benchmark")
    entries = [(n, 'measured', r['miou'], r['overall_accuracy'],
                r['per_class_iou']) for n, r in zip(names, runs)]
    first = entries[0]
    for name, _, miou, oa, ious in entries[1:]:
        entries.append((f'{name} - {first[0]}', 'difference', miou - first[2],
                        oa - first[3], {c: _diff(ious[c], first[4][c])
                                        for c in classes}))
    for name, miou in published:
        entries.append((name, 'published', miou, None, {}))
    header, rows = table_rows(entries)
    return header, rows


def _diff(a, b):
    return None if a is None or b is None else a - b


def compare_runs(paths, names=None, published=False, out=None):
    """Load the runs' results, build the comparison table and write it.

    published: add the paper's published mIoU rows of the runs' benchmark.
    out: path stem; writes out.md and out.csv. Returns the Markdown text.
    """
    runs = [load_results(p) for p in paths]
    names = list(names) if names else [Path(p).name for p in paths]
    benchmark = runs[0].get('benchmark')
    rows_published = PUBLISHED.get(benchmark, ()) if published else ()
    if published and not rows_published:
        log.warning("no published figures for benchmark %r (known: %s)",
                    benchmark, sorted(PUBLISHED))
    header, rows = comparison(runs, names, rows_published)
    text = markdown(header, rows)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix('.md').write_text(text)
        out.with_suffix('.csv').write_text(csv_text(header, rows))
    return text
