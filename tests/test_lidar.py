"""LASDataset on the real IGN LiDAR HD tiles: the grid conversion against a
direct computation from laspy's own reading, the splits, the classified
copies of test tiles, bad input named, and one short run through
scripts/run_pipeline.py."""
import logging
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import laspy
import numpy as np
import pytest
from open3d._ml3d.utils import get_module

from conftest import tiny_run_overrides
from ncm_plugin.datasets import grid
from ncm_plugin.datasets.lidar.las import LasError
from ncm_plugin.datasets.lidar.loader import LASDataset

REPO = Path(__file__).resolve().parent.parent
TILES = REPO / 'tests' / 'data' / 'ign_lidarhd'
TILE = 'test_data_77050_627760_LA93_IGN69'  # 56,035 points
VAL = 'test_data_77060_627760_LA93_IGN69'
TEST = 'test_data_77055_627760_LA93_IGN69'
GRID = 0.5
# The default class map, written out: ASPRS code -> label (0 = ignored).
LABEL_OF_CODE = {2: 1, 3: 2, 4: 3, 5: 4, 6: 5}
CODE_OF_LABEL = {1: 2, 2: 3, 3: 4, 4: 5, 5: 6}
SCALE = np.array([2000.0, 5.0, 5.0])  # intensity, return number, returns


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    """Three real tiles: training, validation, test."""
    folder = tmp_path_factory.mktemp('tiles')
    for name in (TILE, VAL, TEST):
        shutil.copy(TILES / f'{name}.laz', folder)
    return folder


def make_dataset(folder, cache, **kwargs):
    return LASDataset(str(folder), cache_dir=str(cache), **{
        'test_result_folder': str(Path(cache) / 'test'),
        'grid_size': GRID, 'val_files': [f'{VAL}.laz'],
        'test_files': [f'{TEST}*'], **kwargs})


@pytest.fixture(scope='module')
def dataset(folder, tmp_path_factory):
    return make_dataset(folder, tmp_path_factory.mktemp('cache'),
                        chunk_points=10007)  # several chunks per tile


def direct_grid(path, grid_size):
    """{cell (i, j, k): (mean xyz, mean scaled features, majority label)}
    from laspy's reading, one point at a time; and the cell of every point."""
    data = laspy.read(path)
    xyz = np.stack([data.x, data.y, data.z], axis=1)
    xyz = xyz - np.floor(xyz.min(axis=0))
    features = np.stack([data.intensity, data.return_number,
                         data.number_of_returns], axis=1) / SCALE
    cells = [tuple(c) for c in np.floor(xyz / grid_size).astype(int)]
    members = defaultdict(list)
    for i, cell in enumerate(cells):
        members[cell].append(i)
    expected = {}
    for cell, rows in members.items():
        votes = Counter(LABEL_OF_CODE.get(int(data.classification[i]), 0)
                        for i in rows)
        top = max(votes.values())
        expected[cell] = (xyz[rows].mean(axis=0), features[rows].mean(axis=0),
                          min(label for label, n in votes.items() if n == top))
    return expected, cells


def test_the_grid_is_the_barycentre_features_and_majority_label_of_each_cell(
        folder, tmp_path, monkeypatch):
    monkeypatch.setattr(grid, 'MERGE_MIN_CELLS', 300)  # many merges
    dataset = make_dataset(folder, tmp_path, chunk_points=4099)
    data = dataset.get_split('train').get_data(0)
    expected, cells = direct_grid(folder / f'{TILE}.laz', GRID)
    assert len(data['point']) == len(expected) < 56035
    found = {}
    for point, feat, label in zip(data['point'].astype(np.float64),
                                  data['feat'], data['label']):
        found[tuple(np.floor(point / GRID).astype(int))] = (point, feat, label)
    assert found.keys() == expected.keys()
    for cell, (xyz, feat, label) in expected.items():
        np.testing.assert_allclose(found[cell][0], xyz, atol=1e-4)
        np.testing.assert_allclose(found[cell][1], feat, rtol=1e-5, atol=1e-6)
        assert found[cell][2] == label, cell
    # Every original point projects to its own cell.
    proj = np.load(dataset.folder / f'{TILE}.proj.npy')
    assert len(proj) == 56035
    centres = np.floor(data['point'][proj].astype(np.float64) / GRID)
    assert [tuple(c) for c in centres.astype(int)] == cells


def test_labels_names_and_features(dataset):
    assert dataset.get_label_to_names() == {
        0: 'ignored', 1: 'ground', 2: 'low vegetation',
        3: 'medium vegetation', 4: 'high vegetation', 5: 'building'}
    assert get_module('dataset', 'LASDataset') is LASDataset
    # The IGN tiles' colour fields are all zero: colour 'auto' leaves them out.
    assert dataset.feature_names == ['intensity', 'return_number',
                                     'number_of_returns']
    data = dataset.get_split('val').get_data(0)
    assert data['feat'].shape == (len(data['point']), 3)
    assert data['point'].dtype == np.float32
    assert data['point'].min() >= 0 and data['point'][:, :2].max() <= 51


def test_splits_follow_the_file_lists(dataset, folder, tmp_path):
    names = {split: [dataset.get_split(split).get_attr(i)['name']
                     for i in range(len(dataset.get_split(split)))]
             for split in ('train', 'val', 'test')}
    assert names == {'train': [TILE], 'val': [VAL], 'test': [TEST]}
    with pytest.raises(FileNotFoundError,
                       match=r"dataset.test_files: 'nope\*' matches no"):
        LASDataset(str(folder), cache_dir=str(tmp_path), test_files=['nope*'])
    with pytest.raises(ValueError, match=r'dataset.val_files and dataset.'
                       f'test_files: {VAL}.laz is in both splits'):
        LASDataset(str(folder), cache_dir=str(tmp_path), val_files=[VAL],
                   test_files=['*77060*'])


def test_unknown_codes_are_counted_once_per_tile(folder, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        make_dataset(folder, tmp_path, chunk_points=5000)
    lines = [r.getMessage() for r in caplog.records
             if 'not in the class map' in r.getMessage()]
    assert len(lines) == 3  # one per tile, not one per chunk
    # From the tiles' SOURCES.md: code 1 (unclassified) and 64 (structures).
    assert f'{TILE}.laz: ASPRS codes not in the class map, ignored: ' \
        f'1: 4783 points, 64: 70 points' in '\n'.join(lines)


def test_a_second_dataset_converts_nothing_new_settings_convert_anew(
        dataset, folder, tmp_path):
    stamp = (dataset.folder / f'{TILE}.tile.json').stat().st_mtime_ns
    again = make_dataset(folder, tmp_path)  # another cache: converts
    assert again.folder.name == dataset.folder.name
    same = make_dataset(folder, dataset.folder.parent)
    assert (same.folder / f'{TILE}.tile.json').stat().st_mtime_ns == stamp
    merged = make_dataset(folder, dataset.folder.parent,
                          class_map={2: 1, 3: 2, 4: 2, 5: 2, 6: 3},
                          class_names=['ground', 'vegetation', 'building'])
    assert merged.folder != dataset.folder
    # Open3D-ML's preprocessing cache lives below the settings' folder.
    assert merged.cfg.cache_dir == str(merged.folder / 'preprocessed')
    assert (dataset.folder / f'{TILE}.tile.json').stat().st_mtime_ns == stamp
    assert set(np.unique(merged.get_split('train').get_data(0)['label'])) \
        == {0, 1, 2, 3}


def test_the_classified_copy_holds_every_point_and_field(dataset, folder):
    """As ncm-predict writes it: Classification untouched, each point's
    PredictedClassification and probabilities its grid cell's; the
    returned confusion counts every original point with a mapped code."""
    split = dataset.get_split('test')
    attr = split.get_attr(0)
    cells = len(split.get_data(0)['point'])
    rng = np.random.default_rng(0)
    scores = rng.random((cells, 5)).astype(np.float32)
    confusion = dataset.save_test_result({'predict_labels': scores.argmax(1),
                                          'predict_scores': scores.copy()},
                                         attr)
    source = folder / f'{TEST}.laz'
    written = laspy.read(Path(dataset.cfg.test_result_folder) / 'LASDataset'
                         / f'{TEST}.laz')
    original = laspy.read(source)
    assert len(written.points) == len(original.points) == 60653
    for name in original.point_format.dimension_names:
        np.testing.assert_array_equal(written[name], original[name],
                                      err_msg=name)
    # The prediction of every point is its cell's, as an ASPRS code.
    _, point_cells = direct_grid(source, GRID)
    data = split.get_data(0)
    cell_row = {tuple(np.floor(p / GRID).astype(int)): i for i, p in
                enumerate(data['point'].astype(np.float64))}
    rows = np.array([cell_row[c] for c in point_cells])
    codes = np.array([CODE_OF_LABEL[c + 1] for c in scores.argmax(1)])
    np.testing.assert_array_equal(written['PredictedClassification'],
                                  codes[rows])
    share = scores / scores.sum(1, keepdims=True)
    np.testing.assert_allclose(written['building'], share[rows, 4], rtol=1e-5)
    expected = np.zeros((5, 5), dtype=np.int64)
    for code, predicted in zip(original.classification, codes[rows]):
        if int(code) in LABEL_OF_CODE:
            expected[LABEL_OF_CODE[int(code)] - 1,
                     LABEL_OF_CODE[int(predicted)] - 1] += 1
    np.testing.assert_array_equal(confusion, expected)


@pytest.mark.parametrize('kwargs, error, message', [
    ({'class_map': {'ground': 1}}, ValueError,
     r"dataset.class_map: key 'ground' is not an ASPRS class code"),
    ({'class_map': {2: 6}}, ValueError,
     r'dataset.class_map.2: label 6 is out of range 0..5'),
    ({'features': ['intensity', 'nir_x']}, LasError,
     r"point format 8 has no \['nir_x'\]"),
    ({'feature_scale': {'intensity': 0}}, ValueError,
     r'dataset.feature_scale.intensity must be a number > 0'),
    ({'colour': True}, None, None),
    ({'grid_size': -1}, ValueError, 'dataset.grid_size must be'),
])
def test_bad_settings_name_the_key(folder, tmp_path, kwargs, error, message):
    if error is None:  # format 8 has colour fields: asked for, they come
        dataset = make_dataset(folder, tmp_path, **kwargs)
        assert dataset.feature_names[-3:] == ['red', 'green', 'blue']
        return
    with pytest.raises(error, match=message):
        make_dataset(folder, tmp_path, **kwargs)


def test_bad_files_are_named(tmp_path):
    tiles = tmp_path / 'tiles'
    tiles.mkdir()
    bad = tiles / 'notes.las'
    bad.write_text('x y z\n1 2 3\n')
    with pytest.raises(LasError, match=f'{bad}: not a readable LAS/LAZ'):
        LASDataset(str(tiles), cache_dir=str(tmp_path / 'cache'))
    bad.unlink()
    cut = tiles / 'cut.laz'
    data = (TILES / f'{TILE}.laz').read_bytes()
    cut.write_bytes(data[:len(data) // 3])
    with pytest.raises(LasError, match=f'{cut}: '):
        LASDataset(str(tiles), cache_dir=str(tmp_path / 'cache'))
    cut.unlink()
    empty = tiles / 'empty.las'
    laspy.create(point_format=1, file_version='1.2').write(empty)
    with pytest.raises(LasError, match=f'{empty}: the file holds no point'):
        LASDataset(str(tiles), cache_dir=str(tmp_path / 'cache'))
    with pytest.raises(FileNotFoundError, match='is not a folder'):
        LASDataset(str(tmp_path / 'missing'))


def test_colour_is_used_when_the_tiles_have_some(tmp_path):
    """A format-3 tile with real colour: 'auto' gives it to the model (LAS
    colour channels are 16-bit) and to the comparison's input view."""
    tiles = tmp_path / 'tiles'
    tiles.mkdir()
    las = laspy.create(point_format=3, file_version='1.2')
    rng = np.random.default_rng(1)
    las.x, las.y, las.z = (rng.random(500) * 20 + 1000, rng.random(500) * 20,
                           rng.random(500))
    las.red = las.green = las.blue = np.full(500, 32768, dtype=np.uint16)
    las.classification = np.full(500, 2, dtype=np.uint8)
    las.write(tiles / 'colour.las')
    dataset = LASDataset(str(tiles), cache_dir=str(tmp_path / 'cache'))
    assert dataset.feature_names[-3:] == ['red', 'green', 'blue']
    data = dataset.get_split('train').get_data(0)
    np.testing.assert_allclose(data['feat'][:, -3:], 32768 / 65535, rtol=1e-5)
    np.testing.assert_allclose(dataset.display_colours(data), 32768 / 65535,
                               rtol=1e-5)


def test_train_and_test_on_the_real_tiles_through_the_command_line(
        folder, tmp_path):
    """A few steps of a tiny NCM-KPConv: a checkpoint, a results table on
    the test tile, and its classified LAZ with every original point."""
    args = ['torch', '-c', 'ncm_kpconv_lidar.yml', '--dataset_path',
            str(folder), '--device', 'cpu', '--main_log_dir',
            str(tmp_path / 'logs'), '--dataset.cache_dir',
            str(tmp_path / 'cache'), '--dataset.test_result_folder',
            str(tmp_path / 'test'), '--dataset.val_files', f'[{VAL}.laz]',
            '--dataset.test_files', f'[{TEST}.laz]', '--dataset.grid_size',
            '0.5', '--pipeline.test_after_train', 'true',
            *tiny_run_overrides(in_radius=6.0, first_subsampling_dl=0.5)]
    done = subprocess.run([sys.executable, str(REPO / 'scripts' /
                                               'run_pipeline.py'), *args],
                          cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert len(list((tmp_path / 'logs').rglob('ckpt_*.pth'))) == 1
    assert len(list((tmp_path / 'logs').rglob('results.json'))) == 1
    written = laspy.read(tmp_path / 'test' / 'LASDataset' / f'{TEST}.laz')
    assert len(written.points) == 60653
    assert set(np.unique(written['PredictedClassification'])) <= {2, 3, 4, 5, 6}
    assert np.array_equal(written.classification,
                          laspy.read(folder / f'{TEST}.laz').classification)
    assert 0 <= written['entropy'].min() <= written['entropy'].max() <= np.log(5)


def test_the_top_view_shows_a_tile_north_up(tmp_path):
    """visualize_compare --png --view top on a real tile: an 'NCM' run that
    calls the western half building differs from the ground-truth-perfect
    baseline in the left half of its panel only; the input view is the
    intensity in grey."""
    from PIL import Image

    from ncm_plugin.evaluation.vis.render import panel_boxes
    tiles = tmp_path / 'tiles'
    tiles.mkdir()
    shutil.copy(TILES / f'{TILE}.laz', tiles)
    dataset = LASDataset(str(tiles), cache_dir=str(tmp_path / 'logs' / 'cache'
                                                   / 'lidar'))
    data = dataset.get_split('train').get_data(0)
    west = data['point'][:, 0] < 25
    for run, labels in (('base', data['label']),
                        ('ncm', np.where(west, 5, data['label']))):
        (tmp_path / run / 'predictions').mkdir(parents=True)
        np.save(tmp_path / run / 'predictions' / f'{TILE}.npy', labels)
    png = tmp_path / 'top.png'
    done = subprocess.run(
        [sys.executable, str(REPO / 'scripts' / 'visualize_compare.py'),
         '--dataset-config', 'ncm_kpconv_lidar.yml', '--dataset_path',
         str(tiles), '--runs', 'base', 'ncm', '--cloud', TILE, '--split',
         'train', '--png', str(png), '--view', 'top', '--size', '200', '200'],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    image = np.asarray(Image.open(png).convert('RGB')).astype(int)
    panels = {k: image[t:b, l:r] for k, (l, t, r, b) in
              panel_boxes(200, 200).items()}
    differ = (panels['NCM'] != panels['baseline']).any(axis=2)
    columns = np.flatnonzero(differ.any(axis=0))
    # The left half only (points are 3 px wide).
    assert differ.sum() > 500 and columns.max() <= 103
    assert np.array_equal(panels['ground truth'], panels['baseline'])
    pixels = panels['input'].reshape(-1, 3)
    drawn = pixels[(pixels != 255).any(axis=1)]
    assert len(drawn) > 500 and (drawn[:, 0] == drawn[:, 1]).all() and \
        (drawn[:, 1] == drawn[:, 2]).all()  # grey: the intensity


@pytest.fixture(scope='module')
def buildings_run(folder, tmp_path_factory):
    """A tiny run through the command line's main with buildings only
    (every other code ignored): many 6 m spheres hold no labelled point;
    and no validation tile (the config's default val_files: []).
    (pipeline, its log records, its folder)"""
    from ncm_plugin.tools.runner import main
    root = tmp_path_factory.mktemp('buildings')
    handler = logging.Handler()
    handler.records = []
    handler.emit = handler.records.append
    root_logger, level = logging.getLogger(), logging.getLogger().level
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.INFO)
    try:
        pipeline = main([
            'torch', '-c', 'ncm_kpconv_lidar.yml', '--dataset_path',
            str(folder), '--device', 'cpu', '--main_log_dir',
            str(root / 'logs'), '--dataset.cache_dir', str(root / 'cache'),
            '--dataset.test_files', f'[{TEST}.laz]',
            '--dataset.grid_size', '0.5', '--dataset.class_map', '{6: 1}', '--dataset.class_names',
            '[building]', '--model.num_classes', '1', '--model.lbl_values',
            '[0, 1]',
            *tiny_run_overrides(in_radius=6.0, first_subsampling_dl=0.5),
            '--dataset.steps_per_epoch_train', '6',
            '--pipeline.check_every', '1'])
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(level)
    return pipeline, handler.records, root


def test_spheres_without_a_labelled_point_train_on(buildings_run):
    """Such a step runs a zero loss, is counted once an epoch and left out
    of the means (its cross entropy over no point is NaN, which used to
    stop the run as a non-finite loss)."""
    pipeline, records, _ = buildings_run
    counts = pipeline.unlabelled_steps
    assert counts[('training', 0)] > 0, counts
    assert any('step(s) without a labelled point' in r.getMessage()
               for r in records)
    assert np.isfinite(pipeline.losses[0])


def test_without_a_validation_tile_training_runs_its_epochs(buildings_run):
    """(It used to end after epoch 0 in a traceback: an argmin over no
    validation cloud.)"""
    pipeline, records, root = buildings_run
    assert any("validation split holds no cloud" in r.getMessage()
               for r in records)
    assert pipeline.best is None
    assert len(list((root / 'logs').rglob('ckpt_*.pth'))) == 1


def test_the_checkpoint_holds_the_config_and_input_settings(buildings_run):
    """What applying the model to new tiles needs, read back with torch's
    weights_only loader: the settings given on the command line."""
    from ncm_plugin.training import checkpoints
    _, _, root = buildings_run
    [path] = (root / 'logs').rglob('ckpt_*.pth')
    ckpt = checkpoints.load(path)
    assert ckpt['format'] == 'ncm_plugin.checkpoint/2'
    assert ckpt['config']['model']['num_classes'] == 1
    assert ckpt['config']['model']['name'] == 'NCMKPFCNN'
    assert ckpt['config']['dataset']['class_map'] == {'6': 1}
    settings = ckpt['input_settings']
    assert settings['dataset_class'] == 'LASDataset'
    assert settings['lbl_values'] == [0, 1]
    assert settings['ignored_label_inds'] == [0]
    assert settings['dataset']['class_names'] == ['building']
    assert settings['dataset']['grid_size'] == 0.5
    assert settings['dataset']['feature_names'] == [
        'intensity', 'return_number', 'number_of_returns']
