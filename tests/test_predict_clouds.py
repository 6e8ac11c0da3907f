"""A trained model applied to clouds that are not LAS tiles: an S3DIS room
folder, a PLY, an array. Every original point labelled in input order, the
probabilities those of the engine run on the cloud as read here (np.loadtxt,
Open3D), the labels their argmax as lbl_values say, the PLY's own properties
kept, and the features those the training loaders give (checked against the
loaders themselves on generated S3DIS, ScanNet and Semantic3D data)."""
from collections import Counter
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest

from conftest import tiny_run_overrides
from ncm_plugin.datasets.s3dis.synthetic import write_demo_s3dis
from ncm_plugin.inference.cloud_output import output_name, read_provenance
from ncm_plugin.inference.clouds import CloudError, read_cloud
from ncm_plugin.inference.engine import predict_cloud
from ncm_plugin.inference.indoor import classify_cloud
from ncm_plugin.inference.trained import load_trained

S3DIS_CLASSES = ('ceiling', 'floor', 'wall', 'beam', 'column', 'window',
                 'door', 'table', 'chair', 'sofa', 'bookcase', 'board',
                 'clutter')


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A tiny NCM-KPConv trained for a few steps on generated S3DIS rooms
    (Area_1 to train, Area_5 held out), on a coarse 0.3 m grid."""
    from ncm_plugin.tools.runner import main
    root = tmp_path_factory.mktemp('s3dis_run')
    raw = root / 'raw'
    write_demo_s3dis(raw, areas=(1, 5), rooms_per_area=1, seed=3)
    main(['torch', '-c', 'ncm_kpconv_demo.yml', '--dataset_path', str(raw),
          '--device', 'cpu', '--main_log_dir', str(root / 'logs'),
          '--dataset.cache_dir', str(root / 'cache'),
          '--pipeline.test_after_train', 'false',
          *tiny_run_overrides(in_radius=1.5, first_subsampling_dl=0.3)])
    [ckpt] = (root / 'logs').rglob('ckpt_*.pth')
    return load_trained(ckpt), raw


def engine_scores(model, points, colour):
    """[N, C] scores of every point, computed here: the model's preprocess
    and the engine on the arrays as given, mapped back by proj_inds."""
    data = model.preprocess({'point': points, 'feat': colour,
                             'label': np.zeros(len(points), np.int32)},
                            {'split': 'test'})
    scores = predict_cloud(model, data, votes=1, seed=0)
    return scores.probabilities[data['proj_inds']]


def room_rows(room):
    """x y z r g b rows [N, 6] and S3DIS labels [N] of a room's annotation
    files, in sorted file order, read with np.loadtxt."""
    files = sorted((room / 'Annotations').glob('*.txt'))
    rows = [np.loadtxt(f, ndmin=2) for f in files]
    labels = [np.full(len(r), S3DIS_CLASSES.index(f.name.split('_')[0]))
              for r, f in zip(rows, files)]
    return np.concatenate(rows), np.concatenate(labels)


@pytest.fixture(scope='module')
def room_output(trained, tmp_path_factory):
    model, raw = trained
    room = raw / 'Area_5' / 'conferenceRoom_1'
    target = tmp_path_factory.mktemp('room_out') / output_name(room)
    report = classify_cloud(model, room, target)
    return room, target, report


@pytest.fixture(scope='module')
def ply_input(trained, tmp_path_factory):
    """The Area_1 room as a PLY written by Open3D, points shuffled: x y z,
    red green blue (uchar) and a float 'intensity' of its own."""
    rows = np.loadtxt(trained[1] / 'Area_1' / 'office_1' / 'office_1.txt')
    rows = rows[np.random.default_rng(0).permutation(len(rows))]
    cloud = o3d.t.geometry.PointCloud()
    cloud.point.positions = o3d.core.Tensor(rows[:, :3].astype(np.float32))
    cloud.point.colors = o3d.core.Tensor(rows[:, 3:].astype(np.uint8))
    cloud.point.intensity = o3d.core.Tensor(
        np.arange(len(rows), dtype=np.float32).reshape(-1, 1))
    path = tmp_path_factory.mktemp('ply_in') / 'office_1.ply'
    o3d.t.io.write_point_cloud(str(path), cloud)
    return path, rows


@pytest.fixture(scope='module')
def ply_output(trained, ply_input, tmp_path_factory):
    path, _ = ply_input
    target = tmp_path_factory.mktemp('ply_out') / output_name(path)
    classify_cloud(trained[0], path, target)
    return target


def test_a_room_folder_labels_every_annotated_point_in_file_order(
        room_output):
    room, target, report = room_output
    rows, _ = room_rows(room)
    out = np.load(target)
    assert target.name == 'Area_5_conferenceRoom_1.npz'
    assert report['points'] == len(rows) == len(out['label'])
    np.testing.assert_array_equal(out['point'], rows[:, :3].astype(np.float32))
    assert list(out['class_names']) == list(S3DIS_CLASSES)


def test_room_probabilities_are_the_engines_on_the_room_as_read_here(
        trained, room_output):
    room, target, _ = room_output
    rows, _ = room_rows(room)
    out = np.load(target)
    expected = engine_scores(trained[0].model, rows[:, :3].astype(np.float32),
                             rows[:, 3:].astype(np.float32))
    np.testing.assert_allclose(out['probabilities'], expected, atol=1e-6)
    np.testing.assert_allclose(out['probabilities'].sum(axis=1), 1, atol=1e-5)
    # S3DIS: lbl_values 0..12, nothing ignored: the label is the argmax.
    np.testing.assert_array_equal(out['label'],
                                  out['probabilities'].argmax(axis=1))


def test_a_labelled_room_reports_prediction_against_its_classes(room_output):
    room, target, report = room_output
    _, labels = room_rows(room)
    predicted = np.load(target)['label']
    assert report['confusion'] == dict(Counter(zip(labels.tolist(),
                                                   predicted.tolist())))


def test_a_ply_keeps_every_vertex_property_and_gains_label_and_classes(
        ply_input, ply_output):
    _, rows = ply_input
    got = o3d.t.io.read_point_cloud(str(ply_output))
    np.testing.assert_array_equal(got.point.positions.numpy(),
                                  rows[:, :3].astype(np.float32))
    np.testing.assert_array_equal(got.point.colors.numpy(),
                                  rows[:, 3:].astype(np.uint8))
    np.testing.assert_array_equal(got.point.intensity.numpy().ravel(),
                                  np.arange(len(rows)))
    header = ply_output.read_bytes()[:2000].split(b'end_header')[0].decode()
    properties = [line.split()[-1] for line in header.splitlines()
                  if line.startswith('property')]
    assert properties == ['x', 'y', 'z', 'red', 'green', 'blue', 'intensity',
                          'label', *S3DIS_CLASSES]


def test_ply_labels_are_the_argmax_of_the_engines_scores_in_file_order(
        trained, ply_input, ply_output):
    _, rows = ply_input
    got = o3d.t.io.read_point_cloud(str(ply_output))
    probabilities = np.concatenate(
        [got.point[name].numpy() for name in S3DIS_CLASSES], axis=1)
    expected = engine_scores(trained[0].model, rows[:, :3].astype(np.float32),
                             rows[:, 3:].astype(np.uint8).astype(np.float32))
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(got.point.label.numpy().ravel(),
                                  probabilities.argmax(axis=1))


def test_an_output_records_the_checkpoint_and_settings(trained, ply_output,
                                                       room_output):
    expected = trained[0].provenance(votes=1, seed=0, batch_size=None)
    assert read_provenance(ply_output) == expected
    assert read_provenance(room_output[1]) == expected


def test_npy_labels_are_the_argmax_mapped_through_lbl_values_without_ignored(
        trained, tmp_path):
    """A model whose lbl_values are 0..13 with 0 ignored predicts 1..13:
    class c is label c + 1."""
    model, raw = trained
    rows = np.loadtxt(raw / 'Area_1' / 'office_1' / 'office_1.txt')
    rows = rows[rows[:, 0] < np.median(rows[:, 0])].astype(np.float32)
    np.save(tmp_path / 'half.npy', rows)
    names = {str(v): f'class {v}' for v in range(14)}
    shifted = model._replace(input_settings={
        **model.input_settings, 'lbl_values': list(range(14)),
        'ignored_label_inds': [0], 'label_to_names': names})
    target = tmp_path / 'out' / output_name(tmp_path / 'half.npy')
    target.parent.mkdir()
    report = classify_cloud(shifted, tmp_path / 'half.npy', target)
    out = np.load(target)
    assert target.name == 'half.npz' and 'confusion' not in report
    expected = engine_scores(model.model, rows[:, :3], rows[:, 3:])
    np.testing.assert_allclose(out['probabilities'], expected, atol=1e-6)
    np.testing.assert_array_equal(out['label'], expected.argmax(axis=1) + 1)
    assert list(out['class_names']) == [f'class {v}' for v in range(1, 14)]


def test_a_ply_without_colour_for_a_colour_model_is_an_error_naming_it(
        trained, tmp_path):
    cloud = o3d.t.geometry.PointCloud()
    cloud.point.positions = o3d.core.Tensor(
        np.random.default_rng(0).uniform(0, 3, (500, 3)).astype(np.float32))
    path = tmp_path / 'grey.ply'
    o3d.t.io.write_point_cloud(str(path), cloud)
    with pytest.raises(CloudError, match='colour') as error:
        classify_cloud(trained[0], path, tmp_path / 'out.ply')
    assert str(path) in str(error.value)
    assert not (tmp_path / 'out.ply').exists()


def test_output_names_follow_the_input(tmp_path):
    (tmp_path / 'Area_5' / 'office_3').mkdir(parents=True)
    assert output_name(tmp_path / 'Area_5' / 'office_3') == \
        'Area_5_office_3.npz'
    assert output_name('in/scene0000_00_vh_clean_2.ply') == \
        'scene0000_00_vh_clean_2.ply'
    assert output_name('in/scan.txt') == 'scan.npz'
    assert output_name('in/cloud.npy') == 'cloud.npz'


# -- the readers give what the training loaders give ------------------------
def test_an_s3dis_room_reads_as_robust_s3dis_gives_it(trained):
    from ncm_plugin.datasets.s3dis.loader import RobustS3DIS
    _, raw = trained
    data = RobustS3DIS(str(raw), test_area_idx=5).get_split('test') \
        .get_data(0)
    cloud = read_cloud(raw / 'Area_5' / 'conferenceRoom_1')
    np.testing.assert_array_equal(cloud.points, data['point'])
    np.testing.assert_array_equal(cloud.colour, data['feat'])
    np.testing.assert_array_equal(cloud.labels, data['label'])


def test_a_scannet_mesh_reads_as_scannet20_gives_it(tmp_path):
    """Aligned points, colour and the 20-class labels of its labels.ply,
    as the conversion and ScanNet20 give them."""
    from ncm_plugin.datasets.scannet.convert import convert_scannet
    from ncm_plugin.datasets.scannet.loader import ScanNet20
    from ncm_plugin.datasets.scannet.synthetic import write_demo_scannet
    scenes = {'train': ('scene0000_00',), 'val': (), 'test': ()}
    write_demo_scannet(tmp_path / 'raw', seed=2, scenes=scenes)
    convert_scannet(tmp_path / 'raw', tmp_path / 'converted', workers=1)
    data = ScanNet20(str(tmp_path / 'converted')).get_split('train') \
        .get_data(0)
    cloud = read_cloud(tmp_path / 'raw' / 'scans' / 'scene0000_00' /
                       'scene0000_00_vh_clean_2.ply')
    np.testing.assert_array_equal(cloud.points, data['point'])
    np.testing.assert_array_equal(cloud.colour, data['feat'])
    np.testing.assert_array_equal(cloud.labels, data['label'])
    assert 'alpha' in cloud.vertices.dtype.names and cloud.faces is not None


def test_a_semantic3d_scan_reads_as_robust_semantic3d_gives_it(tmp_path):
    """Colour is its model input ('feat'), intensity is not."""
    from ncm_plugin.datasets.semantic3d.loader import RobustSemantic3D
    from ncm_plugin.datasets.semantic3d.synthetic import write_demo_semantic3d
    name = 'bildstein_station1_xyz_intensity_rgb'
    write_demo_semantic3d(tmp_path, scans={'train': (name,)},
                          points_per_scan=2000)
    data = RobustSemantic3D(str(tmp_path)).get_split('all').get_data(0)
    cloud = read_cloud(tmp_path / f'{name}.txt')
    np.testing.assert_array_equal(cloud.points, data['point'])
    np.testing.assert_array_equal(cloud.colour, data['feat'])
    np.testing.assert_array_equal(cloud.labels, data['label'])


def test_the_command_classifies_rooms_and_plys_and_names_a_tile_it_cannot(
        trained, ply_input, tmp_path):
    """Through ncm-predict's main: an S3DIS model takes a room folder and a
    PLY, and refuses a LAS tile (one line naming it, exit status 1)."""
    from ncm_plugin.tools.predict import main
    model, raw = trained
    room = raw / 'Area_5' / 'conferenceRoom_1'
    tile = Path(__file__).parent / 'data' / 'ign_lidarhd' / \
        'test_data_77055_627760_LA93_IGN69.laz'
    with pytest.raises(SystemExit) as stop:
        main(['--ckpt', str(model.path), str(room), str(ply_input[0]),
              str(tile), '--out', str(tmp_path / 'out')])
    assert 'test_data_77055_627760_LA93_IGN69.laz' in str(stop.value)
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == [
        'Area_5_conferenceRoom_1.npz',
        'Area_5_conferenceRoom_1.npz.confusion.json', 'office_1.ply']
