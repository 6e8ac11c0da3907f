"""scripts/run_pipeline.py end to end on generated S3DIS data, and its parsing."""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ncm_plugin.datasets.s3dis.synthetic import write_demo_s3dis
from ncm_plugin.config import apply_overrides, load_config, resolve_config
from ncm_plugin.tools.runner import parse_overrides

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / 'scripts' / 'run_pipeline.py'


def run_pipeline(*args, cwd):
    return subprocess.run([sys.executable, str(SCRIPT), 'torch', *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope='module')
def s3dis_raw(tmp_path_factory):
    root = tmp_path_factory.mktemp('raw') / 'Stanford3dDataset'
    write_demo_s3dis(root, areas=(1, 5), rooms_per_area=1, seed=3)
    return root


def quick_run_args(data, tmp_path):
    return ['-c', 'ncm_kpconv_demo.yml', '--dataset_path', data, '--device',
            'cpu', '--main_log_dir', tmp_path / 'logs',
            '--dataset.cache_dir', tmp_path / 'cache',
            '--dataset.test_result_folder', tmp_path / 'test',
            '--dataset.steps_per_epoch_train', '8',
            '--dataset.steps_per_epoch_valid', '4',
            '--pipeline.max_epoch', '1', '--model.ncm.weight', '0.5']


def test_train_then_test_from_the_command_line(s3dis_raw, tmp_path):
    train = run_pipeline(*quick_run_args(s3dis_raw, tmp_path),
                         '--pipeline.test_after_train', 'false', cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    log = train.stderr + train.stdout
    assert 'Training spheres:' in log
    assert 'Training loss terms: cross_entropy' in log and 'ncm_kl' in log
    checkpoints = sorted((tmp_path / 'logs').rglob('ckpt_*.pth'))
    assert [c.name for c in checkpoints] == ['ckpt_00000.pth', 'ckpt_00001.pth']
    assert checkpoints[0].parent.parent.name == 'NCMKPFCNN_RobustS3DIS_torch'

    test = run_pipeline(*quick_run_args(s3dis_raw, tmp_path), '--split', 'test',
                        cwd=tmp_path)
    assert test.returncode == 0, test.stderr[-3000:]
    log = test.stderr + test.stdout
    assert 'Loading checkpoint' in log and 'ckpt_00001.pth' in log
    assert 'Test IoU per class' in log and 'mIoU' in log
    predictions = sorted((tmp_path / 'test').rglob('*.npy'))
    rooms = sorted((s3dis_raw / 'Area_5').iterdir())
    assert [p.stem for p in predictions] == [f'Area_5_{r.name}' for r in rooms]
    room = rooms[0] / f'{rooms[0].name}.txt'
    num_points = sum(1 for _ in open(room))
    labels = np.load(predictions[0])
    assert labels.shape == (num_points,)
    assert 0 <= labels.min() and labels.max() < 13
    # The run's log folder: results in the paper's columns, predictions of
    # every test room in its point order.
    run = checkpoints[0].parent.parent
    results = json.loads((run / 'results.json').read_text())
    assert list(results['per_class_iou'])[7:9] == ['chair', 'table']
    present = [v for v in results['per_class_iou'].values() if v is not None]
    assert results['miou'] == pytest.approx(np.mean(present))
    assert 0 < results['overall_accuracy'] <= 100
    assert results['clouds'] == [f'Area_5_{r.name}' for r in rooms]
    assert (run / 'results.md').exists() and (run / 'results.csv').exists()
    saved = np.load(run / 'predictions' / f'Area_5_{rooms[0].name}.npy')
    np.testing.assert_array_equal(saved, labels)


def test_missing_dataset_path_is_one_clear_error(tmp_path):
    result = run_pipeline('-c', 'ncm_kpconv_s3dis.yml', '--dataset_path',
                          tmp_path / 'nowhere', cwd=tmp_path)
    assert result.returncode != 0
    assert 'nowhere' in result.stderr.splitlines()[-1]
    assert 'Traceback' not in result.stderr


def test_bare_config_names_are_found_in_configs():
    assert resolve_config('ncm_kpconv_s3dis.yml') == \
        REPO / 'ncm_plugin' / 'configs' / 'ncm_kpconv_s3dis.yml'
    with pytest.raises(FileNotFoundError, match='available'):
        resolve_config('no_such_config.yml')


def test_dotted_overrides_are_typed_and_nested():
    parser = argparse.ArgumentParser()
    overrides = parse_overrides(
        ['--model.ncm.weight', '0.5', '--dataset.test_area_idx', '5',
         '--pipeline.main_log_dir=./x', '--model.ncm.direction', 'reverse',
         '--dataset.class_weights', '[1, 2]'], parser)
    assert overrides == {'model.ncm.weight': 0.5, 'dataset.test_area_idx': 5,
                         'pipeline.main_log_dir': './x',
                         'model.ncm.direction': 'reverse',
                         'dataset.class_weights': [1, 2]}
    cfg = load_config(resolve_config('ncm_kpconv_s3dis.yml'))
    apply_overrides(cfg, overrides, 'ncm_kpconv_s3dis.yml')
    assert cfg['model']['ncm'] == {'weight': 0.5, 'direction': 'reverse',
                                   'eps': 1e-6, 'neighborhood': 'kpconv'}
    assert cfg['dataset']['test_area_idx'] == 5


@pytest.mark.parametrize('dataset', ['s3dis', 'scannet', 'semantic3d', 'lidar'])
def test_baseline_and_ncm_configs_differ_only_by_ncm_and_folders(dataset):
    ncm = load_config(resolve_config(f'ncm_kpconv_{dataset}.yml'))
    base = load_config(resolve_config(f'kpconv_deform_{dataset}.yml'))
    assert ncm['model'].pop('ncm')['weight'] > 0
    assert base['model'].pop('ncm')['weight'] == 0
    for cfg in (ncm, base):
        cfg['pipeline'].pop('main_log_dir')
        cfg['dataset'].pop('test_result_folder')
    assert ncm == base
