"""S3DIS data path: raw annotations -> original_pkl cache -> the stock loader.

References are built independently of the code under test: ``np.loadtxt`` on
each annotation file (not pandas), the stock ``get_min_bbox`` for boxes, and
line counts of the raw files written by the synthetic generator.
"""
import logging
import os
import pickle
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from open3d._ml3d.datasets import S3DIS
from open3d._ml3d.datasets.utils import get_min_bbox
from open3d._ml3d.utils import get_module

from ncm_plugin.datasets.s3dis import convert as s3dis_convert
from ncm_plugin.datasets.s3dis.loader import RobustS3DIS
from ncm_plugin.datasets.s3dis.convert import (convert_s3dis,
                                               convert_s3dis_report,
                                               read_annotation)
from ncm_plugin.datasets.s3dis.synthetic import write_demo_s3dis

S3DIS_CLASSES = ['ceiling', 'floor', 'wall', 'beam', 'column', 'window',
                 'door', 'table', 'chair', 'sofa', 'bookcase', 'board',
                 'clutter']
ROOMS = ['Area_1_office_1.pkl', 'Area_5_conferenceRoom_1.pkl']


@pytest.fixture(scope='session')
def raw_tree(tmp_path_factory):
    """Two raw rooms, Area_1/office_1 and Area_5/conferenceRoom_1; tests that
    change files work on a copy (``tree``)."""
    root = tmp_path_factory.mktemp('raw') / 's3dis'
    write_demo_s3dis(root, areas=(1, 5), rooms_per_area=1, seed=3)
    return root


@pytest.fixture
def tree(raw_tree, tmp_path):
    """A private copy of ``raw_tree``."""
    return Path(shutil.copytree(raw_tree, tmp_path / 's3dis'))


def count_lines(path):
    return Path(path).read_bytes().count(b'\n')


def class_index(annotation_file):
    return S3DIS_CLASSES.index(Path(annotation_file).name.split('_')[0])


def expected_room(room):
    """Stock cache content of a room, from np.loadtxt and the stock get_min_bbox."""
    blocks, bboxes = [], []
    for file in sorted((room / 'Annotations').glob('*.txt')):
        values = np.loadtxt(file, ndmin=2)
        labels = np.full((len(values), 1), float(class_index(file)))
        blocks.append(np.concatenate([values, labels], axis=1))
        bboxes.append([file.name.split('_')[0]] + get_min_bbox(values))
    return np.concatenate(blocks), bboxes


def load_pkl(path):
    with open(path, 'rb') as f:
        return pickle.load(f)


def names(paths):
    return [Path(p).name for p in paths]


def test_conversion_writes_the_stock_cache_content(tree):
    written = convert_s3dis(tree, workers=2)

    assert sorted(names(written)) == ROOMS
    for path in written:
        area, room = re.match(r'(Area_\d+)_(.+)\.pkl', path.name).groups()
        pc_label, bboxes = load_pkl(path)
        expected_pc, expected_bboxes = expected_room(tree / area / room)
        room_file = tree / area / room / f'{room}.txt'
        assert pc_label.dtype == np.float64
        assert pc_label.shape == (count_lines(room_file), 7)
        np.testing.assert_array_equal(pc_label, expected_pc)
        assert bboxes == expected_bboxes


def test_stock_s3dis_reads_the_converted_cache(tree):
    convert_s3dis(tree, workers=1)
    split = S3DIS(dataset_path=str(tree)).get_split('all')

    assert len(split) == 2
    for index in range(len(split)):
        name = split.get_attr(index)['name']
        area, room = re.match(r'(Area_\d+)_(.+)', name).groups()
        data = split.get_data(index)
        room_dir = tree / area / room
        assert data['point'].shape == (count_lines(room_dir / f'{room}.txt'), 3)
        assert data['feat'].shape == data['point'].shape
        expected_labels = Counter()
        for file in (room_dir / 'Annotations').glob('*.txt'):
            expected_labels[class_index(file)] += count_lines(file)
        assert Counter(data['label'].tolist()) == expected_labels


def test_partial_tree_converts_the_rooms_that_exist(tree):
    # a download cut before any file of Area_2/office_1, and an empty Area_3
    (tree / 'Area_2' / 'office_1' / 'Annotations').mkdir(parents=True)
    (tree / 'Area_3').mkdir()

    dataset = RobustS3DIS(str(tree), test_area_idx=5, convert_workers=1)

    assert names(dataset.all_files) == ROOMS
    assert len(dataset.get_split('training')) == 1
    assert len(dataset.get_split('test')) == 1


def test_corrupted_rows_are_skipped_with_a_warning_and_valid_rows_kept(
        tree, caplog):
    wall = tree / 'Area_1' / 'office_1' / 'Annotations' / 'wall_1.txt'
    clean_values = np.loadtxt(wall)
    lines = wall.read_bytes().splitlines(keepends=True)
    # the corruptions of Area_3/hallway_2, Area_5/hallway_6, Area_5/office_19,
    # inserted after lines 2, 10 and 20: they become lines 3, 12 and 23
    lines[20:20] = [b'-9.1\x160 1.000 2.000 3 4 5\n']
    lines[10:10] = [b'103.0\x100000 1.000 2.000 3 4 5\n']
    lines[2:2] = [b'185\x00187 1.000 2.000 3 4 5\n']
    wall.write_bytes(b''.join(lines))

    with caplog.at_level(logging.WARNING, logger=s3dis_convert.__name__):
        report = convert_s3dis_report(tree, workers=2)

    assert [(row.file, row.line) for row in report.skipped] == [
        (wall, 3), (wall, 12), (wall, 23)]
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    for line, message in zip((3, 12, 23), warnings):
        assert f'{wall}:{line}:' in message
    np.testing.assert_array_equal(read_annotation(wall)[0], clean_values)
    pc_label, _ = load_pkl(tree / 'original_pkl' / 'Area_1_office_1.pkl')
    room_file = tree / 'Area_1' / 'office_1' / 'office_1.txt'
    assert len(pc_label) == count_lines(room_file)


def test_read_annotation_rejects_rows_without_six_numbers(tmp_path):
    path = tmp_path / 'chair_1.txt'
    path.write_bytes(b'1 2 3 4 5 6\n'
                     b'1 2 3 4 5\n'          # 5 values
                     b'\n'                   # blank: ignored, not reported
                     b'1 2 3 4 5 6 7\n'      # 7 values
                     b'1.2.3 2 3 4 5 6\n'    # not a number
                     b'nan 2 3 4 5 6\n'      # letters
                     b' 7.5 8 9 10 11 12 \r\n')

    values, skipped = read_annotation(path)

    np.testing.assert_array_equal(values, [[1, 2, 3, 4, 5, 6],
                                           [7.5, 8, 9, 10, 11, 12]])
    assert [row.line for row in skipped] == [2, 4, 5, 6]
    assert skipped[0].reason == '5 values instead of 6'
    assert skipped[2].reason == 'token that is not a number'
    assert skipped[3].reason == 'byte 0x6e at column 1'


@pytest.mark.parametrize('text', [
    b'1 2 3 4 5 6\n-7.25 8 9 10 11 12\n',          # S3DIS: single spaces
    b'1\t2 3  4 5 6\n -7.25 8 9 10 11 12 \n',      # other blanks
])
def test_clean_files_parse_whatever_their_spacing(tmp_path, text):
    path = tmp_path / 'table_1.txt'
    path.write_bytes(text)
    values, skipped = read_annotation(path)
    np.testing.assert_array_equal(values, [[1, 2, 3, 4, 5, 6],
                                           [-7.25, 8, 9, 10, 11, 12]])
    assert skipped == []


def test_missing_path_is_a_clear_error(tmp_path):
    missing = tmp_path / 'no_such_s3dis'
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        RobustS3DIS(str(missing))


def test_folder_without_rooms_is_a_clear_error(tmp_path):
    (tmp_path / 'Area_1' / 'office_1').mkdir(parents=True)  # no annotations
    with pytest.raises(ValueError, match=re.escape(str(tmp_path))):
        RobustS3DIS(str(tmp_path))


def test_interrupted_conversion_is_completed_on_next_init(tree):
    convert_s3dis(tree, workers=1)
    done = tree / 'original_pkl' / 'Area_5_conferenceRoom_1.pkl'
    missing = tree / 'original_pkl' / 'Area_1_office_1.pkl'
    expected = load_pkl(missing)
    done_mtime = done.stat().st_mtime_ns
    missing.unlink()
    # what a killed run leaves: a truncated temp file, no pkl
    stale = tree / 'original_pkl' / 'Area_1_office_1.pkl.x1y2z3.tmp'
    stale.write_bytes(pickle.dumps(expected)[:100])

    dataset = RobustS3DIS(str(tree), convert_workers=1)

    assert names(dataset.all_files) == ROOMS
    pc_label, bboxes = load_pkl(missing)
    np.testing.assert_array_equal(pc_label, expected[0])
    assert bboxes == expected[1]
    assert done.stat().st_mtime_ns == done_mtime  # not converted again


def test_pickle_write_interrupted_leaves_no_file(tmp_path, monkeypatch):
    def dump_then_die(obj, f):
        f.write(b'\x80\x04partial')
        raise KeyboardInterrupt

    monkeypatch.setattr(s3dis_convert.pickle, 'dump', dump_then_die)
    with pytest.raises(KeyboardInterrupt):
        s3dis_convert.write_pickle_atomic([np.zeros((2, 7)), []],
                                          tmp_path / 'Area_1_office_1.pkl')

    assert list(tmp_path.iterdir()) == []


def test_pickle_gets_the_usual_file_mode_not_a_private_one(tmp_path):
    """mkstemp creates 0600 files; a shared dataset cache must stay readable."""
    old_umask = os.umask(0o022)
    try:
        s3dis_convert.write_pickle_atomic([np.zeros((2, 7)), []], tmp_path / 'a.pkl')
    finally:
        os.umask(old_umask)
    assert (tmp_path / 'a.pkl').stat().st_mode & 0o777 == 0o644


def test_test_area_is_matched_on_the_file_name_not_the_path(raw_tree, tmp_path):
    tree = shutil.copytree(raw_tree, tmp_path / 'Area_5_backup' / 's3dis')

    dataset = RobustS3DIS(str(tree), test_area_idx=5, convert_workers=1)

    assert names(dataset.get_split_list('test')) == [ROOMS[1]]
    assert names(dataset.get_split_list('training')) == [ROOMS[0]]
    # the stock rule puts every room in the test split
    assert len(S3DIS.get_split_list(dataset, 'test')) == 2


def test_cache_without_raw_rooms_still_loads(tree):
    convert_s3dis(tree, workers=1)
    for area in ('Area_1', 'Area_5'):
        shutil.rmtree(tree / area)  # raw data deleted once converted

    dataset = RobustS3DIS(str(tree), convert_workers=1)

    assert len(dataset.get_split('all')) == 2


def test_robust_s3dis_is_registered():
    assert get_module('dataset', 'RobustS3DIS') is RobustS3DIS


def test_generator_is_deterministic(tmp_path):
    kwargs = dict(areas=(2,), rooms_per_area=2)
    first = write_demo_s3dis(tmp_path / 'a', seed=7, **kwargs)
    second = write_demo_s3dis(tmp_path / 'b', seed=7, **kwargs)
    other = write_demo_s3dis(tmp_path / 'c', seed=8, **kwargs)

    def files(root):
        return sorted(p.relative_to(root) for p in root.rglob('*.txt'))

    assert files(tmp_path / 'a') == files(tmp_path / 'b')
    for file in files(tmp_path / 'a'):
        assert ((tmp_path / 'a' / file).read_bytes()
                == (tmp_path / 'b' / file).read_bytes())
    assert names(first) == names(second) == names(other)
    room = Path('Area_2') / first[0].name / f'{first[0].name}.txt'
    assert ((tmp_path / 'a' / room).read_bytes()
            != (tmp_path / 'c' / room).read_bytes())


def test_generator_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / 'Area_1').mkdir()
    with pytest.raises(FileExistsError, match=re.escape(str(tmp_path))):
        write_demo_s3dis(tmp_path)


def test_generator_writes_all_classes_in_the_raw_layout(tmp_path):
    rooms = write_demo_s3dis(tmp_path)

    assert [f'{r.parent.name}/{r.name}' for r in rooms] == [
        'Area_1/office_1', 'Area_1/conferenceRoom_1',
        'Area_2/conferenceRoom_1', 'Area_2/hallway_1',
        'Area_3/hallway_1', 'Area_3/lounge_1',
        'Area_5/lounge_1', 'Area_5/office_1']
    number = rb'-?\d+\.\d{3}'
    row = re.compile(rb' '.join([number] * 3 + [rb'\d{1,3}'] * 3))
    points, area_5 = Counter(), set()
    for room in rooms:
        annotations = sorted((room / 'Annotations').glob('*.txt'))
        assert all(re.fullmatch(r'[a-z]+_\d+\.txt', f.name) for f in annotations)
        room_values, _ = read_annotation(room / f'{room.name}.txt')
        parts = [read_annotation(f)[0] for f in annotations]
        union = np.concatenate(parts)  # the room file holds the same rows
        np.testing.assert_array_equal(union[np.lexsort(union.T)],
                                      room_values[np.lexsort(room_values.T)])
        for file, values in zip(annotations, parts):
            points[file.name.split('_')[0]] += len(values)
            if room.parent.name == 'Area_5':
                area_5.add(file.name.split('_')[0])
        colors = room_values[:, 3:]
        assert np.all((colors >= 0) & (colors <= 255))
        assert np.all(colors == np.round(colors))
        first_lines = (room / f'{room.name}.txt').read_bytes().splitlines()
        assert all(row.fullmatch(line) for line in first_lines[:200])
    assert sorted(points) == sorted(S3DIS_CLASSES)
    assert sorted(area_5) == sorted(S3DIS_CLASSES)  # the usual test area too
    assert 200_000 < sum(points.values()) < 700_000
