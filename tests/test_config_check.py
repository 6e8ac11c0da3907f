"""Strict configs: one clear error naming the key and the file, at start."""
import copy
import subprocess
import sys

import pytest
import yaml

from ncm_plugin.tools.config_check import ConfigError, check_config
from ncm_plugin.config import load_config, resolve_config, shipped_configs
from tiny_training import SCRIPT

CONFIG = resolve_config('ncm_kpconv_s3dis.yml')


@pytest.fixture
def cfg():
    return copy.deepcopy(load_config(CONFIG))


def test_shipped_configs_pass():
    for name in shipped_configs():
        check_config(load_config(resolve_config(name)), name)


@pytest.mark.parametrize('ncm, key, message', [
    ({'wieght': 1.0}, 'model.ncm', "unknown key.*'wieght'"),
    ({'weight': 'high'}, 'model.ncm.weight', 'must be a float'),
    ({'k': 2.5, 'neighborhood': 'knn'}, 'model.ncm.k', 'must be an int'),
    ({'direction': 'both'}, 'model.ncm.direction', "one of .*'forward'"),
    ({'weight': -0.5}, 'model.ncm.weight', 'must be >= 0'),
    ({'eps': -1e-6}, 'model.ncm.eps', 'must be > 0'),
    ({'eps': 0.0}, 'model.ncm.eps', 'must be > 0'),
    ({'layer': 5}, 'model.ncm.layer', 'has 5 layer'),
    ({'target': 'room'}, 'model.ncm.target', "one of .*'scene'"),
    ({'k': 8}, 'model.ncm.k', 'only with neighborhood: knn'),
])
def test_bad_ncm_settings_name_key_and_file(cfg, ncm, key, message):
    cfg['model']['ncm'].update(ncm)
    with pytest.raises(ConfigError, match=message) as error:
        check_config(cfg, CONFIG)
    assert str(error.value).startswith(f'{CONFIG}: {key}')


def test_a_layer_without_convolutions_is_refused(cfg):
    cfg['model']['architecture'] = ['simple', 'resnetb_strided', 'max_pool',
                                    'resnetb', 'nearest_upsample', 'unary']
    cfg['model']['ncm']['layer'] = 1
    with pytest.raises(ConfigError, match='layer is 1.*no convolution'):
        check_config(cfg, CONFIG)


@pytest.mark.parametrize('target', ['sample', 'scene'])
def test_both_target_kinds_are_valid_keys(cfg, target):
    cfg['model']['ncm']['target'] = target
    check_config(cfg, CONFIG)


@pytest.mark.parametrize('pipeline, message', [
    ({'num_wokers': 2}, "pipeline.num_wokers: unknown key .did you mean "
                        "num_workers"),
    ({'keep_checkpoints': 0}, 'pipeline.keep_checkpoints must be >= 1'),
    ({'amp': 'yes'}, 'pipeline.amp must be a bool'),
    ({'distributed': True}, 'pipeline.distributed: .*torchrun'),
])
def test_bad_pipeline_settings_name_the_key(cfg, pipeline, message):
    cfg['pipeline'].update(pipeline)
    with pytest.raises(ConfigError, match=message):
        check_config(cfg, CONFIG)


@pytest.mark.parametrize('pipeline, message', [
    ({'batch_size': 0}, r'pipeline.batch_size must be >= 1, got 0'),
    ({'val_batch_size': 2.5}, r'pipeline.val_batch_size must be an int >= 1'),
    ({'test_batch_size': True}, r'pipeline.test_batch_size must be an int'),
    ({'max_epoch': -1}, r'pipeline.max_epoch must be >= 0, got -1'),
    ({'max_epoch': 'abc'}, r"pipeline.max_epoch must be an int >= 0, got 'abc'"),
    ({'save_ckpt_freq': 0}, r'pipeline.save_ckpt_freq must be >= 1'),
    ({'learning_rate': 0}, r'pipeline.learning_rate must be > 0, got 0'),
    ({'learning_rate': '1e-3'}, r'a number > 0, got .1e-3. \(YAML reads 1e-3 '
                                r'as a string; write 1.0e-3\)'),
    ({'adam_lr': -0.01}, r'pipeline.adam_lr must be > 0'),
    ({'deform_lr_factor': 0.0}, r'pipeline.deform_lr_factor must be > 0'),
    ({'weight_decay': -1e-3}, r'pipeline.weight_decay must be >= 0'),
    ({'momentum': 1.5}, r'pipeline.momentum must be in \[0, 1\]'),
    ({'scheduler_gamma': 0}, r'pipeline.scheduler_gamma must be in \(0, 1\]'),
    ({'scheduler_gamma': 1.01}, r'pipeline.scheduler_gamma must be in \(0, 1\]'),
    ({'lr_decays': 2}, r'pipeline.lr_decays must be in \(0, 1\]'),
    ({'seed': -1}, r'pipeline.seed must be >= 0'),
    ({'optimizer': {'lr': -1}}, r'pipeline.optimizer.lr must be > 0'),
    ({'optimizer': {'betas': [0.9, 1.0]}},
     r'pipeline.optimizer.betas must be in \[0, 1\)'),
    ({'optimizer': 0.01}, r'pipeline.optimizer must be a mapping'),
])
def test_bad_stock_pipeline_numbers_name_the_key(cfg, pipeline, message):
    cfg['pipeline'].update(pipeline)
    with pytest.raises(ConfigError, match=message) as error:
        check_config(cfg, CONFIG)
    assert str(error.value).startswith(f'{CONFIG}: pipeline.')


@pytest.mark.parametrize('pipeline', [
    {'max_epoch': 0},  # one pass: Open3D-ML trains epochs 0..max_epoch
    {'scheduler_gamma': 1, 'momentum': 0, 'weight_decay': 0},
    {'lr_decays': {'1': 0.5}},  # KPConv's own code takes a mapping
    {'learning_rate': 1.0e-3, 'seed': 0},
])
def test_stock_pipeline_numbers_at_their_limits_pass(cfg, pipeline):
    cfg['pipeline'].update(pipeline)
    check_config(cfg, CONFIG)


PVCNN = resolve_config('ncm_pvcnn_s3dis.yml')


def test_pvcnn_refuses_mixed_precision_naming_the_key():
    cfg = load_config(PVCNN)
    cfg['pipeline']['amp'] = True
    with pytest.raises(ConfigError, match='float32') as error:
        check_config(cfg, PVCNN)
    assert str(error.value).startswith(
        f'{PVCNN}: pipeline.amp is not supported by NCMPVCNN')


def test_stock_pvcnn_in_the_ncm_pipeline_refuses_mixed_precision_too():
    cfg = load_config(PVCNN)
    cfg['model']['name'] = 'PVCNN'
    del cfg['model']['ncm']
    check_config(copy.deepcopy(cfg), PVCNN)
    cfg['pipeline']['amp'] = True
    with pytest.raises(ConfigError, match='pipeline.amp is not supported by '
                                          'PVCNN'):
        check_config(cfg, PVCNN)


def test_mixed_precision_stays_allowed_for_kpconv(cfg):
    cfg['pipeline']['amp'] = True
    check_config(cfg, CONFIG)


def test_cuda_is_refused_when_torch_has_none(cfg, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    cfg['pipeline']['device'] = 'cuda'
    with pytest.raises(ConfigError, match=f'torch {torch.__version__}'
                       .replace('+', r'\+')) as error:
        check_config(cfg, CONFIG, overridden={'pipeline.device': '--device'})
    assert str(error.value).startswith(
        f'--device (command line, config {CONFIG}): pipeline.device: ')


@pytest.mark.parametrize('dataset, message', [
    ({'convert_workers': 0}, 'dataset.convert_workers must be >= 1'),
    ({'convert_workers': '4'}, 'dataset.convert_workers must be an int'),
    ({'demo_data': {'kind': 's3dis', 'rooms': 3}}, 'dataset.demo_data.rooms'),
])
def test_bad_dataset_settings_name_the_key(cfg, dataset, message):
    cfg['dataset'].update(dataset)
    with pytest.raises(ConfigError, match=message):
        check_config(cfg, CONFIG)


LIDAR = resolve_config('ncm_kpconv_lidar.yml')


@pytest.mark.parametrize('section, values, message', [
    ('dataset', {'class_map': {2: 1, 6: 7}},
     r'dataset.class_map.6: label 7 is out of range 0..5'),
    ('dataset', {'class_names': ['ground', 'building']},
     r'dataset.class_map.4: label 3 is out of range 0..2'),
    ('model', {'num_classes': 4},
     r'model.num_classes is 4 but dataset.class_names has 5 classes'),
    ('model', {'ignored_label_inds': []}, 'model.ignored_label_inds must hold 0'),
    ('model', {'lbl_values': [1, 2, 3, 4, 5]}, r'model.lbl_values must be \[0,'),
    ('dataset', {'features': ['intensity']},
     r'model.in_features_dim 5 does not fit the 1 feature'),
    ('dataset', {'colour': 'yes'}, 'dataset.colour must be auto, true or false'),
])
def test_bad_lidar_settings_name_the_key(section, values, message):
    cfg = copy.deepcopy(load_config(LIDAR))
    cfg[section].update(values)
    with pytest.raises(ConfigError, match=message):
        check_config(cfg, LIDAR)


def test_the_command_line_names_the_override_before_reading_data(tmp_path):
    missing = tmp_path / 'no_data_here'
    result = subprocess.run(
        [sys.executable, str(SCRIPT), 'torch', '-c', 'ncm_kpconv_s3dis.yml',
         '--dataset_path', str(missing), '--model.ncm.direction', 'sideways'],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and 'Traceback' not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert '--model.ncm.direction (command line, config' in last
    assert 'ncm_kpconv_s3dis.yml' in last and 'sideways' in last
    assert 'no_data_here' not in last and not missing.exists()


def test_the_command_line_names_the_config_file(tmp_path):
    cfg = load_config(CONFIG)
    cfg['model']['ncm']['layer'] = 9
    path = tmp_path / 'typo.yml'
    path.write_text(yaml.safe_dump(cfg))
    result = subprocess.run(
        [sys.executable, str(SCRIPT), 'torch', '-c', str(path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and 'Traceback' not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"run_pipeline: error: {path}: model.ncm.layer is 9, but "
        f"model.architecture has 5 layer(s) (0..4: one more than its "
        f"strided/pool blocks before the first upsample)")
