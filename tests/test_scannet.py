"""ScanNet v2: raw scans -> converted arrays -> ScanNet20 (20 benchmark classes) -> a run.

References are independent of the code under test: Open3D's own PLY reader for
positions and colours, ``struct`` for the ushort labels, a Python loop over
the aggregation for instances, the NYU40 ids written out by hand.
"""
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
from open3d._ml3d.utils import get_module

from conftest import tiny_run_overrides, train_then_test
from ncm_plugin.datasets.ply import PlyError, read_element, write_ply
from ncm_plugin.datasets.scannet.loader import ScanNet20, label_to_nyu40, nyu40_to_label
from ncm_plugin.datasets.scannet.convert import (ConversionError, convert_scannet,
                                                 load_split_lists)
from ncm_plugin.datasets.scannet.synthetic import write_demo_scannet

SCENES = {'train': ('scene0000_00', 'scene0000_01'), 'val': ('scene0011_00',),
          'test': ('scene0707_00',)}
# The benchmark's classes, in label order 1..20, as NYU40 ids.
BENCHMARK_NYU40 = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39]


@pytest.fixture(scope='module')
def raw(tmp_path_factory):
    """Raw synthetic ScanNet: 2 train, 1 val, 1 test scan; copy it before changing it."""
    root = tmp_path_factory.mktemp('scannet_raw')
    write_demo_scannet(root, seed=1, scenes=SCENES)
    return root


@pytest.fixture(scope='module')
def converted(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp('scannet')
    convert_scannet(raw, out, workers=1)
    return out


@pytest.fixture
def raw_copy(raw, tmp_path):
    return Path(shutil.copytree(raw, tmp_path / 'raw'))


def scene_file(root, name, suffix):
    folder = 'scans_test' if name in SCENES['test'] else 'scans'
    return root / folder / name / f'{name}{suffix}'


def labels_by_struct(path):
    """'label' of every vertex of a ScanNet labels ply, unpacked record by record."""
    data = Path(path).read_bytes()
    header_end = data.index(b'end_header\n') + len(b'end_header\n')
    count = int(data[:header_end].split(b'element vertex ')[1].split(b'\n')[0])
    record = struct.Struct('<fffBBBBH')
    block = data[header_end:header_end + count * record.size]
    return np.array([row[-1] for row in record.iter_unpack(block)])


# -- labels -------------------------------------------------------------------
def test_nyu40_ids_map_to_the_20_benchmark_labels():
    # wall, floor, otherfurniture, desk, unannotated, otherprop, ceiling, blinds, beyond NYU40
    nyu40 = np.array([1, 2, 39, 14, 0, 40, 22, 13, 41, 1000])
    np.testing.assert_array_equal(nyu40_to_label(nyu40), [1, 2, 20, 13, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(nyu40_to_label(BENCHMARK_NYU40), np.arange(1, 21))


def test_label_names_have_unlabeled_and_the_20_classes():
    names = ScanNet20.get_label_to_names()
    assert len(names) == 21
    assert (names[0], names[1], names[2], names[16], names[20]) == \
        ('unlabeled', 'wall', 'floor', 'shower curtain', 'otherfurniture')


def test_predictions_map_back_to_nyu40_ids():
    np.testing.assert_array_equal(label_to_nyu40(np.arange(1, 21)), BENCHMARK_NYU40)
    with pytest.raises(ValueError, match='1..20'):
        label_to_nyu40([0, 3])


def test_official_lists_have_1201_312_100_scenes():
    lists = load_split_lists()
    assert [len(lists[s]) for s in ('train', 'val', 'test')] == [1201, 312, 100]
    assert not set(lists['train']) & set(lists['val'])


def test_a_scene_in_two_lists_is_refused(tmp_path):
    (tmp_path / 'train.txt').write_text('scene0000_00\nscene0001_00\n')
    (tmp_path / 'val.txt').write_text('scene0001_00\n')
    with pytest.raises(ValueError, match='scene0001_00 is in both the train and the val list'):
        load_split_lists(tmp_path / 'train.txt', tmp_path / 'val.txt')


# -- PLY ------------------------------------------------------------------------
def test_binary_and_ascii_ply_read_the_same_vertices(tmp_path):
    header = ('ply\nformat {}\ncomment made by hand\nelement vertex 3\nproperty float x\n'
              'property float y\nproperty float z\nproperty uchar red\nproperty ushort label\n'
              'element face 2\nproperty list uchar int vertex_indices\nend_header\n')
    rows = [(0.5, -1.25, 2.0, 7, 1), (3.0, 4.0, -5.5, 255, 39), (1e-3, 0.0, 1.0, 0, 40)]
    binary = header.format('binary_little_endian 1.0').encode() + b''.join(
        struct.pack('<fffBH', *r) for r in rows) + struct.pack('<Biii', 3, 0, 1, 2) * 2
    ascii_text = header.format('ascii 1.0') + ''.join(
        f'{x} {y} {z} {r} {label}\n' for x, y, z, r, label in rows) + '3 0 1 2\n' * 2
    big = header.format('binary_big_endian 1.0').encode() + b''.join(
        struct.pack('>fffBH', *r) for r in rows) + struct.pack('>Biii', 3, 0, 1, 2) * 2
    for name, content in (('b.ply', binary), ('a.ply', ascii_text.encode()), ('e.ply', big)):
        (tmp_path / name).write_bytes(content)
        vertex = read_element(tmp_path / name)
        assert vertex.dtype.names == ('x', 'y', 'z', 'red', 'label')
        np.testing.assert_allclose(np.c_[vertex['x'], vertex['y'], vertex['z']],
                                   [r[:3] for r in rows], rtol=1e-6)
        np.testing.assert_array_equal(vertex['label'], [1, 39, 40])


def test_written_ply_is_read_by_open3d(tmp_path):
    vertex = np.zeros(4, dtype=[('x', 'f4'), ('y', 'f4'), ('z', 'f4'), ('red', 'u1'),
                                ('green', 'u1'), ('blue', 'u1')])
    vertex['x'], vertex['red'] = [0, 1, 2, 3], [10, 20, 30, 40]
    write_ply(tmp_path / 'w.ply', vertex, faces=[[0, 1, 2], [1, 2, 3]])
    cloud = o3d.t.io.read_point_cloud(str(tmp_path / 'w.ply'))
    np.testing.assert_array_equal(cloud.point['positions'].numpy()[:, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(cloud.point['colors'].numpy()[:, 0], [10, 20, 30, 40])


@pytest.mark.parametrize('cut', [1, 5000, 300000])  # in the faces, in the vertices, deep
def test_truncated_ply_is_an_error_naming_the_file(raw_copy, cut):
    mesh = scene_file(raw_copy, 'scene0000_00', '_vh_clean_2.ply')
    mesh.write_bytes(mesh.read_bytes()[:-cut])
    with pytest.raises(PlyError, match=f'{mesh}: truncated PLY file'):
        read_element(mesh)


def test_truncated_header_is_an_error_naming_the_file(raw_copy):
    mesh = scene_file(raw_copy, 'scene0000_00', '_vh_clean_2.ply')
    mesh.write_bytes(mesh.read_bytes()[:120])
    with pytest.raises(PlyError, match=f"{mesh}: PLY header has no 'end_header'"):
        read_element(mesh)


# -- conversion -----------------------------------------------------------------
def test_conversion_writes_the_stock_files_and_the_split_lists(converted):
    names = sorted(p.name for p in converted.iterdir())
    for scene in SCENES['train'] + SCENES['val']:
        for suffix in ('_vert.npy', '_sem_label.npy', '_ins_label.npy', '_bbox.npy'):
            assert scene + suffix in names
    assert [n for n in names if n.startswith('scene0707_00')] == ['scene0707_00_vert.npy']
    assert len((converted / 'scannetv2_val.txt').read_text().split()) == 312


def test_vertices_are_the_mesh_in_aligned_coordinates(raw, converted):
    for scene in ('scene0000_00', 'scene0707_00'):
        cloud = o3d.t.io.read_point_cloud(str(scene_file(raw, scene, '_vh_clean_2.ply')))
        xyz = cloud.point['positions'].numpy().astype(np.float64)
        meta = scene_file(raw, scene, '.txt').read_text()
        if 'axisAlignment' in meta:  # the test scan has none
            numbers = meta.split('axisAlignment = ')[1].split('\n')[0].split()
            matrix = np.array(numbers, dtype=float).reshape(4, 4)
            xyz = (np.c_[xyz, np.ones(len(xyz))] @ matrix.T)[:, :3]
        vert = np.load(converted / f'{scene}_vert.npy')
        assert vert.dtype == np.float32 and vert.shape == (len(xyz), 6)
        np.testing.assert_allclose(vert[:, :3], xyz, atol=1e-4)
        np.testing.assert_array_equal(vert[:, 3:], cloud.point['colors'].numpy())


def test_semantic_labels_are_the_labels_ply_and_instances_the_aggregation(raw, converted):
    scene = 'scene0000_00'
    np.testing.assert_array_equal(np.load(converted / f'{scene}_sem_label.npy'),
                                  labels_by_struct(scene_file(raw, scene, '_vh_clean_2.labels.ply')))
    segments = json.loads(scene_file(raw, scene, '_vh_clean_2.0.010000.segs.json').read_text())
    groups = json.loads(scene_file(raw, scene, '_vh_clean.aggregation.json').read_text())
    object_of_segment = {}
    for group in groups['segGroups']:
        for segment in group['segments']:
            object_of_segment[segment] = group['objectId'] + 1
    expected = [object_of_segment.get(s, 0) for s in segments['segIndices']]
    np.testing.assert_array_equal(np.load(converted / f'{scene}_ins_label.npy'), expected)


def test_boxes_cover_their_instances_and_skip_wall_and_floor(converted):
    scene = 'scene0000_00'
    vert = np.load(converted / f'{scene}_vert.npy')
    instance = np.load(converted / f'{scene}_ins_label.npy')
    semantic = np.load(converted / f'{scene}_sem_label.npy')
    boxes = np.load(converted / f'{scene}_bbox.npy')
    assert boxes.shape[1] == 7 and len(boxes) > 5
    assert not np.isin(boxes[:, 6], [1, 2, 22, 29, 40]).any()
    for box in boxes:  # each box is the extent of the instance whose class it carries
        candidates = [i for i in np.unique(instance[semantic == box[6]]) if i > 0]
        extents = [(vert[instance == i, :3].min(0), vert[instance == i, :3].max(0))
                   for i in candidates]
        assert any(np.allclose((lo + hi) / 2, box[:3], atol=1e-5) and
                   np.allclose(hi - lo, box[3:6], atol=1e-5) for lo, hi in extents)


def test_a_second_run_converts_nothing(raw, converted):
    report = convert_scannet(raw, converted, workers=1)
    assert report.written == [] and len(report.cached) == 4


def test_truncated_ply_fails_its_scene_only_and_names_the_file(raw_copy, tmp_path):
    mesh = scene_file(raw_copy, 'scene0000_01', '_vh_clean_2.ply')
    mesh.write_bytes(mesh.read_bytes()[:len(mesh.read_bytes()) // 2])
    with pytest.raises(ConversionError, match=f'scene0000_01: {mesh}: truncated PLY file'):
        convert_scannet(raw_copy, tmp_path / 'out', workers=2)
    assert (tmp_path / 'out' / 'scene0000_00_vert.npy').exists()
    assert not (tmp_path / 'out' / 'scene0000_01_vert.npy').exists()


def test_labels_of_another_length_are_an_error_naming_both_files(raw_copy, tmp_path):
    labels = scene_file(raw_copy, 'scene0011_00', '_vh_clean_2.labels.ply')
    vertex = read_element(labels)
    write_ply(labels, vertex[:-10])
    with pytest.raises(ConversionError, match=f'{labels} has {len(vertex) - 10} vertices but '
                                              f'.*scene0011_00_vh_clean_2.ply has {len(vertex)}'):
        convert_scannet(raw_copy, tmp_path / 'out', workers=1)


# -- loader ---------------------------------------------------------------------
def test_scannet20_is_registered():
    assert get_module('dataset', 'ScanNet20') is ScanNet20


def test_scannet20_splits_follow_the_official_lists(converted):
    dataset = ScanNet20(str(converted))
    names = {split: [dataset.get_split(split).get_attr(i)['name']
                     for i in range(len(dataset.get_split(split)))]
             for split in ('train', 'validation', 'test')}
    assert names == {'train': list(SCENES['train']), 'validation': list(SCENES['val']),
                     'test': list(SCENES['test'])}


def test_scannet20_labels_are_the_20_class_labels(raw, converted):
    split = ScanNet20(str(converted)).get_split('train')
    data = split.get_data(0)
    raw_labels = labels_by_struct(scene_file(raw, split.get_attr(0)['name'],
                                             '_vh_clean_2.labels.ply'))
    np.testing.assert_array_equal(data['label'], nyu40_to_label(raw_labels))
    # the scene has wall, floor, otherfurniture and unlabeled ids (ceiling, box, object, none)
    assert {1, 2, 20, 0} <= set(np.unique(data['label']).tolist())
    assert {0, 22, 29, 40} <= set(raw_labels.tolist())
    assert data['point'].shape == data['feat'].shape == (len(raw_labels), 3)


def test_test_scenes_come_without_labels(converted):
    split = ScanNet20(str(converted)).get_split('test')
    data = split.get_data(0)
    assert len(data['point']) == len(np.load(converted / 'scene0707_00_vert.npy'))
    assert not data['label'].any()


def test_missing_conversion_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='scripts/preprocess_scannet.py'):
        ScanNet20(str(tmp_path))


# -- one short run ------------------------------------------------------------------
TINY = tiny_run_overrides(in_radius=2.5, first_subsampling_dl=0.15)


@pytest.fixture(scope='module')
def run(converted, tmp_path_factory):
    """Train (0 epochs = one pass) then test, through the command line's main."""
    return train_then_test('ncm_kpconv_scannet.yml', converted,
                           tmp_path_factory.mktemp('scannet_run'), TINY)


def test_training_writes_a_checkpoint(run):
    root = run
    assert [p.name for p in root.rglob('ckpt_*.pth')] == ['ckpt_00000.pth']


def test_test_split_writes_a_nyu40_label_per_vertex(run, converted):
    root = run
    predictions = np.loadtxt(root / 'test' / 'ScanNet20' / 'scene0707_00.txt', dtype=int)
    assert len(predictions) == len(np.load(converted / 'scene0707_00_vert.npy'))
    assert set(predictions.tolist()) <= set(BENCHMARK_NYU40)

