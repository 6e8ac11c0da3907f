"""Result tables: per-class IoU, mIoU over present classes, overall accuracy,
the paper's column order, results files and the comparison of runs."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from open3d._ml3d.datasets import S3DIS

from ncm_plugin.evaluation.recorder import labels_to_indices
from ncm_plugin.evaluation.results import (comparison, confusion_matrix, load_results,
                                           scores, write_results)

REPO = Path(__file__).resolve().parent.parent
S3DIS_NAMES = [S3DIS.get_label_to_names()[k] for k in range(13)]


def test_scores_from_a_known_confusion_matrix():
    # rows = ground truth a, b, c; c has no ground-truth point but is
    # predicted once.
    confusion = [[4, 1, 1], [2, 3, 0], [0, 0, 0]]
    result = scores(confusion, ['a', 'b', 'c'])
    assert result['per_class_iou'] == {'a': 50.0, 'b': 50.0, 'c': None}
    assert result['miou'] == 50.0
    assert result['overall_accuracy'] == pytest.approx(700 / 11)
    assert result['present_classes'] == ['a', 'b']
    assert result['num_points'] == 11
    other = scores([[5, 1, 0], [2, 3, 0], [0, 0, 7]], ['a', 'b', 'c'])
    assert other['per_class_iou'] == {'a': 62.5, 'b': 50.0, 'c': 100.0}
    assert other['miou'] == pytest.approx((62.5 + 50 + 100) / 3)


def test_confusion_matrix_counts_pairs_and_skips_ignored_points():
    truth = np.array([0, 0, 1, 2, -1, 2])
    pred = np.array([0, 1, 1, 2, 0, 0])
    assert confusion_matrix(truth, pred, 3).tolist() == [[1, 1, 0], [0, 1, 0],
                                                         [1, 0, 1]]
    values = np.array([1, 2, 3])  # label 0 is ignored
    assert labels_to_indices([0, 1, 3, 2], values).tolist() == [-1, 0, 2, 1]


def test_s3dis_columns_follow_the_paper():
    confusion = np.diag(np.arange(1, 14))
    result = scores(confusion, S3DIS_NAMES, 'S3DIS')
    assert result['classes'] == (
        'ceiling floor wall beam column window door chair table bookcase sofa '
        'board clutter').split()
    assert list(result['per_class_iou']) == result['classes']
    assert result['miou'] == 100.0 and result['overall_accuracy'] == 100.0


def test_results_files_hold_the_same_figures(tmp_path):
    result = scores([[4, 1, 1], [2, 3, 0], [0, 0, 0]], ['a', 'b', 'c'])
    json_path, md_path, csv_path = write_results(tmp_path, result)
    stored = json.loads(json_path.read_text())
    assert stored['miou'] == 50.0 and stored['per_class_iou']['c'] is None
    rows = list(csv.reader(csv_path.open()))
    assert rows[0] == ['run', 'source', 'mIoU', 'OA', 'a', 'b', 'c']
    assert rows[1][2:] == ['50.00', '63.64', '50.00', '50.00', '']
    assert '| this run | measured | 50.00 | 63.64 | 50.00 | 50.00 |  |' in \
        md_path.read_text()


def stored_run(folder, confusion):
    write_results(folder, {**scores(confusion, ['a', 'b']),
                           'benchmark': 'S3DIS'})
    return folder


def test_comparison_table_from_two_stored_results(tmp_path):
    stored_run(tmp_path / 'base' / 'run', [[8, 2], [2, 8]])  # found by folder
    ncm = stored_run(tmp_path / 'ncm', [[9, 1], [1, 9]])
    header, rows = comparison([load_results(tmp_path / 'base'),
                               load_results(ncm / 'results.json')],
                              ['KPConv', 'NCM'],
                              published=[('NCM-KPConv (published)', 68.29)])
    assert header == ['run', 'source', 'mIoU', 'OA', 'a', 'b']
    assert rows == [
        ['KPConv', 'measured', '66.67', '80.00', '66.67', '66.67'],
        ['NCM', 'measured', '81.82', '90.00', '81.82', '81.82'],
        ['NCM - KPConv', 'difference', '+15.15', '+10.00', '+15.15', '+15.15'],
        ['NCM-KPConv (published)', 'published', '68.29', '', '', '']]


def test_compare_results_script_writes_markdown_and_csv(tmp_path):
    stored_run(tmp_path / 'a', [[8, 2], [2, 8]])
    stored_run(tmp_path / 'b', [[9, 1], [1, 9]])
    out = tmp_path / 'table'
    result = subprocess.run(
        [sys.executable, str(REPO / 'scripts' / 'compare_results.py'),
         str(tmp_path / 'a'), str(tmp_path / 'b'), '--names', 'base', 'ncm',
         '--published', '--out', str(out)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert '| ncm - base | difference | +15.15 |' in result.stdout
    assert 'KPConv deform (published) | published | 67.10' in result.stdout
    rows = list(csv.reader((tmp_path / 'table.csv').open()))
    assert [r[1] for r in rows[1:]] == ['measured', 'measured', 'difference',
                                        'published', 'published']
    assert (tmp_path / 'table.md').read_text().count('\n') == 7


def test_a_run_without_results_is_named_in_the_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='nothing_here'):
        load_results(tmp_path / 'nothing_here')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='--split test'):
        load_results(tmp_path / 'empty')


def test_scannet_and_semantic3d_columns_name_every_class():
    from open3d._ml3d.datasets import Semantic3D

    from ncm_plugin.datasets.scannet.loader import ScanNet20
    from ncm_plugin.evaluation.results import PAPER_CLASS_ORDER, class_names, paper_order
    for dataset, benchmark in ((ScanNet20, 'ScanNet'),
                               (Semantic3D, 'Semantic3D')):
        names = class_names(dataset.get_label_to_names(), [0])
        assert paper_order(names, benchmark) == list(PAPER_CLASS_ORDER[benchmark])
    assert paper_order(['x', 'y'], 'S3DIS') == ['x', 'y']  # unknown: label order
