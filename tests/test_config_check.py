"""Strict configs: one clear error naming the key and the file, at start."""
import copy
import subprocess
import sys

import pytest
import yaml

from ncm_plugin.tools.config_check import ConfigError, check_config
from ncm_plugin.config import load_config, resolve_config
from tiny_training import SCRIPT

CONFIG = resolve_config('ncm_kpconv_s3dis.yml')


@pytest.fixture
def cfg():
    return copy.deepcopy(load_config(CONFIG))


def test_shipped_configs_pass():
    for name in ('ncm_kpconv_s3dis.yml', 'kpconv_deform_s3dis.yml',
                 'ncm_kpconv_scannet.yml', 'ncm_kpconv_semantic3d.yml',
                 'ncm_kpconv_demo.yml', 'ncm_kpconv_lidar.yml',
                 'kpconv_deform_lidar.yml', 'ncm_kpconv_ign_lidarhd.yml'):
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
