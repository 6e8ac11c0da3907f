"""Semantic3D reduced-8: raw text -> grid arrays (streamed) -> RobustSemantic3D -> a run.

References are independent of the code under test: ``np.loadtxt`` for parsing,
a Python dict over the rows for the grid subsampling, line counts of the files
for the submission format.
"""
import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from open3d._ml3d.utils import get_module

from conftest import tiny_run_overrides, train_then_test
from ncm_plugin.datasets import grid
from ncm_plugin.datasets.semantic3d import convert as semantic3d_convert
from ncm_plugin.datasets.semantic3d.loader import RobustSemantic3D
from ncm_plugin.datasets.semantic3d.convert import (ScanFiles, convert_semantic3d, read_raw_scan,
                                                    write_label_lines)
from ncm_plugin.datasets.semantic3d.synthetic import SCANS, write_demo_semantic3d

TRAIN, VAL, TEST = SCANS['train'][0], SCANS['val'][0], SCANS['test'][0]
# Just off 6 cm: no 1 mm coordinate of the files lies on a cell boundary, so the
# reference does not depend on the last bit of the parsed floats.
GRID = 0.06 * (1 + 1e-7)


@pytest.fixture(scope='module')
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp('semantic3d_raw')
    write_demo_semantic3d(root, seed=2, points_per_scan=20_000)
    return root


@pytest.fixture(scope='module')
def converted(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp('semantic3d')
    convert_semantic3d(raw, out, grid_size=GRID)
    return out


def grid_by_dict(values, labels, grid):
    """{cell: (mean of the 7 columns, majority label, smallest on ties)}, row by row."""
    cells = {}
    for row, label in zip(values, labels):
        key = tuple(np.floor(row[:3] / grid).astype(int))
        total, votes = cells.setdefault(key, [np.zeros(7), Counter()])
        total += row
        votes[label] += 1
    return {key: (total / sum(votes.values()), min(votes, key=lambda l: (-votes[l], l)))
            for key, (total, votes) in cells.items()}


def write_scan(folder, name, rows, labels=None):
    """A hand-made scan: ``rows`` are text lines, ``labels`` too (None: a test scan)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f'{name}.txt').write_text(''.join(f'{r}\n' for r in rows))
    if labels is not None:
        (folder / f'{name}.labels').write_text(''.join(f'{label}\n' for label in labels))
    return folder


ROWS = ['0.010 0.020 0.030 -1200 10 20 30', '0.020 0.030 0.040 -1100 30 40 50',
        '5.000 5.000 0.500 -900 200 200 200', '5.010 5.020 0.510 -950 100 100 100',
        '-3.000 2.000 1.000 -1000 0 0 0']


# -- conversion -----------------------------------------------------------------
def test_grid_is_the_barycentre_and_majority_label_of_each_cell(raw, tmp_path, monkeypatch):
    monkeypatch.setattr(grid, 'MERGE_MIN_CELLS', 500)  # many merges
    convert_semantic3d(raw, tmp_path, grid_size=GRID, chunk_rows=997)
    values = np.loadtxt(raw / f'{TRAIN}.txt')
    labels = np.loadtxt(raw / f'{TRAIN}.labels', dtype=int)
    cells = np.floor(values[:, :3] / GRID)
    ratio = values[:, :3][values[:, :3] != 0] / GRID
    assert np.abs(ratio - np.round(ratio)).min() > 1e-9  # no coordinate on a cell boundary
    expected = grid_by_dict(values, labels, GRID)

    points = np.load(tmp_path / f'{TRAIN}.points.npy')
    grid_labels = np.load(tmp_path / f'{TRAIN}.labels.npy')
    assert len(points) == len(expected) == len(np.unique(cells, axis=0)) < len(values)
    found = {tuple(np.floor(p[:3] / GRID).astype(int)): (p, label)
             for p, label in zip(points.astype(np.float64), grid_labels)}
    assert found.keys() == expected.keys()
    for key, (mean, label) in expected.items():
        np.testing.assert_allclose(found[key][0], mean, rtol=1e-6, atol=1e-4)
        assert found[key][1] == label


def test_test_scan_keeps_the_cell_of_every_raw_line(raw, converted):
    values = np.loadtxt(raw / f'{TEST}.txt')
    points = np.load(converted / f'{TEST}.points.npy')
    proj = np.load(converted / f'{TEST}.proj.npy')
    assert not (converted / f'{TEST}.labels.npy').exists()
    assert proj.dtype == np.int32 and len(proj) == len(values)
    np.testing.assert_array_equal(np.floor(points[proj, :3].astype(np.float64) / GRID),
                                  np.floor(values[:, :3] / GRID))


def test_a_second_run_converts_nothing_and_a_new_grid_everything(raw, converted, tmp_path):
    assert convert_semantic3d(raw, converted, grid_size=GRID).written == []
    out = Path(shutil.copytree(converted, tmp_path / 'copy'))
    assert len(convert_semantic3d(raw, out, grid_size=0.1).written) == 4


def test_labels_of_another_length_are_an_error_naming_both_files(tmp_path):
    write_scan(tmp_path, 'scan', ROWS, [1, 2, 3, 4])
    with pytest.raises(ValueError, match=f'{tmp_path / "scan.labels"} has 4 lines but '
                                         f'{tmp_path / "scan.txt"} has 5'):
        convert_semantic3d(tmp_path, tmp_path / 'out')


def test_trailing_blank_lines_do_not_count(tmp_path):
    write_scan(tmp_path, 'scan', ROWS + ['', '  '], [1, 2, 3, 4, 5])
    assert convert_semantic3d(tmp_path, tmp_path / 'out').bad_rows == []


def test_bad_rows_of_a_training_scan_are_skipped_with_a_warning(tmp_path, caplog):
    clean = write_scan(tmp_path / 'clean', 'scan', ROWS, [1, 1, 2, 2, 3])
    rows = ROWS[:2] + ['0.5 0.5 x1 -1000 1 2 3', ''] + ROWS[2:4] + ['1 2 3'] + ROWS[4:]
    dirty = write_scan(tmp_path / 'dirty', 'scan', rows, [1, 1, 8, 8, 2, 2, 8, 3])
    with caplog.at_level(logging.WARNING, logger=semantic3d_convert.__name__):
        report = convert_semantic3d(dirty, tmp_path / 'dirty_out', grid_size=0.5)
    convert_semantic3d(clean, tmp_path / 'clean_out', grid_size=0.5)

    txt = dirty / 'scan.txt'
    assert [(b.file, b.line) for b in report.bad_rows] == [(txt, 3), (txt, 4), (txt, 7)]
    for line in (3, 4, 7):
        assert f'{txt}:{line}: not 7 numbers, row skipped' in caplog.text
    for suffix in ('points.npy', 'labels.npy'):  # nothing valid lost, nothing invalid kept
        np.testing.assert_array_equal(np.load(tmp_path / 'dirty_out' / f'scan.{suffix}'),
                                      np.load(tmp_path / 'clean_out' / f'scan.{suffix}'))


def test_a_bad_row_of_a_test_scan_is_an_error(tmp_path):
    write_scan(tmp_path, 'scan', ROWS[:3] + ['1.0 2.0 nan? 4 5 6 7'] + ROWS[3:])
    with pytest.raises(ValueError, match=f'{tmp_path / "scan.txt"}:4: not 7 numbers'):
        convert_semantic3d(tmp_path, tmp_path / 'out')


def test_a_label_that_is_not_a_number_becomes_unlabeled(tmp_path, caplog):
    write_scan(tmp_path, 'scan', ROWS, [1, 1, 'five', 'five', 3])
    with caplog.at_level(logging.WARNING, logger=semantic3d_convert.__name__):
        convert_semantic3d(tmp_path, tmp_path / 'out', grid_size=0.5)
    assert f'{tmp_path / "scan.labels"}:3: label is not an integer, set to 0' in caplog.text
    np.testing.assert_array_equal(np.load(tmp_path / 'out' / 'scan.labels.npy'), [3, 1, 0])


def test_a_label_out_of_range_is_an_error(tmp_path):
    write_scan(tmp_path, 'scan', ROWS, [1, 2, 9, 1, 1])
    with pytest.raises(ValueError, match=f'{tmp_path / "scan.labels"}:3: label 9 is not in 0..8'):
        convert_semantic3d(tmp_path, tmp_path / 'out')


def test_a_row_with_too_many_values_is_an_error_naming_the_file(tmp_path):
    write_scan(tmp_path, 'scan', ROWS[:2] + ['1 2 3 4 5 6 7 8'] + ROWS[2:], [1] * 6)
    with pytest.raises(ValueError, match=f'{tmp_path / "scan.txt"}: .*line 3'):
        convert_semantic3d(tmp_path, tmp_path / 'out')


# -- loader ---------------------------------------------------------------------
def test_robust_semantic3d_is_registered_with_the_stock_labels():
    assert get_module('dataset', 'RobustSemantic3D') is RobustSemantic3D
    names = RobustSemantic3D.get_label_to_names()
    assert names[0] == 'unlabeled' and names[8] == 'cars' and len(names) == 9


def test_splits_follow_labels_and_val_files(converted):
    dataset = RobustSemantic3D(str(converted), val_files=[VAL])
    names = {split: [s.name for s in dataset.get_split_list(split)]
             for split in ('training', 'validation', 'test')}
    assert names == {'training': sorted(SCANS['train']), 'validation': [VAL], 'test': [TEST]}


def test_converted_scan_data(converted):
    split = RobustSemantic3D(str(converted), val_files=[VAL]).get_split('training')
    data, attr = split.get_data(0), split.get_attr(0)
    points = np.load(converted / f'{attr["name"]}.points.npy')
    np.testing.assert_array_equal(data['point'], points[:, :3])
    np.testing.assert_array_equal(data['feat'], points[:, 4:7])
    assert data['label'].dtype == np.int32 and set(np.unique(data['label'])) <= set(range(9))


def test_raw_text_scans_are_read_with_pandas_3(raw):
    """The stock get_data calls read_csv(delim_whitespace=True), gone in pandas 3."""
    split = RobustSemantic3D(str(raw), val_files=[VAL]).get_split('training')
    data = split.get_data(0)
    name = split.get_attr(0)['name']
    values = np.loadtxt(raw / f'{name}.txt', dtype=np.float32)
    np.testing.assert_array_equal(data['point'], values[:, :3])
    np.testing.assert_array_equal(data['intensity'], values[:, 3])
    np.testing.assert_array_equal(data['label'], np.loadtxt(raw / f'{name}.labels', dtype=int))


def test_submission_has_one_label_per_raw_line_in_raw_order(raw, converted, tmp_path):
    dataset = RobustSemantic3D(str(converted), val_files=[VAL], test_result_folder=str(tmp_path))
    points = np.load(converted / f'{TEST}.points.npy')
    predictions = np.arange(len(points)) % 8  # as the pipeline gives them: 0..7
    dataset.save_test_result({'predict_labels': predictions}, {'name': TEST})

    written = np.loadtxt(tmp_path / 'RobustSemantic3D' / f'{TEST}.labels', dtype=int)
    values = np.loadtxt(raw / f'{TEST}.txt')
    row_of_cell = {tuple(np.floor(p[:3].astype(np.float64) / GRID).astype(int)): i
                   for i, p in enumerate(points)}
    expected = [predictions[row_of_cell[tuple(c)]] + 1
                for c in np.floor(values[:, :3] / GRID).astype(int)]
    np.testing.assert_array_equal(written, expected)


def test_label_lines_are_single_digits(tmp_path):
    write_label_lines(tmp_path / 'a.labels', np.array([1, 8, 0, 3]), index=np.array([3, 3, 1]))
    assert (tmp_path / 'a.labels').read_text() == '3\n3\n8\n'
    with pytest.raises(ValueError, match='single digits'):
        write_label_lines(tmp_path / 'b.labels', np.array([1, 12]))


def test_read_raw_scan_matches_loadtxt(tmp_path):
    write_scan(tmp_path, 'scan', ROWS, [0, 1, 2, 3, 4])
    values, labels = read_raw_scan(ScanFiles('scan', tmp_path / 'scan.txt',
                                             tmp_path / 'scan.labels'), chunk_rows=2)
    np.testing.assert_array_equal(values, np.loadtxt(tmp_path / 'scan.txt', dtype=np.float32))
    np.testing.assert_array_equal(labels, [0, 1, 2, 3, 4])


# -- one short run ------------------------------------------------------------------
TINY = tiny_run_overrides(in_radius=8.0, first_subsampling_dl=0.6)


@pytest.fixture(scope='module')
def run(converted, tmp_path_factory):
    """Train (0 epochs = one pass) then test, through the command line's main."""
    return train_then_test('ncm_kpconv_semantic3d.yml', converted,
                           tmp_path_factory.mktemp('semantic3d_run'),
                           TINY + ['--dataset.val_files', f'[{VAL}]'])


def test_training_writes_a_checkpoint(run):
    root = run
    assert [p.name for p in root.rglob('ckpt_*.pth')] == ['ckpt_00000.pth']


def test_test_split_writes_a_label_per_raw_line(run, raw):
    root = run
    submission = root / 'test' / 'RobustSemantic3D' / f'{TEST}.labels'
    labels = np.loadtxt(submission, dtype=int)
    assert len(labels) == (raw / f'{TEST}.txt').read_bytes().count(b'\n')
    assert set(labels.tolist()) <= set(range(1, 9))

