"""Each shipped ncm_<model>_<dataset>.yml is Open3D-ML's own config for that
backbone and dataset with only: the model name, the model.ncm block, the
pipeline name, the log and test folders, and the dataset fixes listed here."""
import copy
from pathlib import Path

import open3d._ml3d
import pytest
import yaml

from ncm_plugin.config import load_config, resolve_config
from ncm_plugin.tools.config_check import check_config

STOCK = Path(open3d._ml3d.__file__).parent / 'configs'
KNN = {'weight': 1.0, 'direction': 'forward', 'eps': 1e-6,
       'neighborhood': 'knn', 'k': 16}
OWN = {'weight': 1.0, 'direction': 'forward', 'eps': 1e-6,
       'neighborhood': 'model'}
REVERSE = {**OWN, 'direction': 'reverse'}
SPHERES = {'sampler': {'name': 'SharedSpatiallyRegularSampler'}}
SCANNET20 = {'class_weights': [], 'ignored_label_inds': [0]}

# ours: (stock file, model.ncm, dataset name, other dataset keys,
#        other model keys)
PAIRS = {
    'ncm_kpfcnn_s3dis': ('kpconv_s3dis', OWN, 'RobustS3DIS', SPHERES, {}),
    'ncm_kpfcnn_semantic3d': ('kpconv_semantic3d', REVERSE,
                              'RobustSemantic3D', SPHERES, {}),
    'ncm_randlanet_s3dis': ('randlanet_s3dis', OWN, 'RobustS3DIS', {}, {}),
    'ncm_randlanet_semantic3d': ('randlanet_semantic3d', REVERSE,
                                 'RobustSemantic3D', {}, {}),
    'ncm_pointtransformer_s3dis': ('pointtransformer_s3dis', KNN,
                                   'RobustS3DIS', {}, {}),
    'ncm_pvcnn_s3dis': ('pvcnn_s3dis', KNN, 'RobustS3DIS', {}, {}),
    'ncm_sparseconvunet_scannet': ('sparseconvunet_scannet', KNN, 'ScanNet20',
                                   SCANNET20, {'ignored_label_inds': [0]}),
}
SEMSEG_DATASETS = ('s3dis', 'semantic3d', 'scannet')


def test_every_stock_semantic_segmentation_config_of_our_datasets_has_a_pair():
    stock = {p.stem for p in STOCK.glob('*.yml')
             if p.stem.split('_')[-1] in SEMSEG_DATASETS}
    assert stock == {spec[0] for spec in PAIRS.values()}


@pytest.mark.parametrize('ours', sorted(PAIRS))
def test_config_is_the_stock_one_but_for_the_ncm_changes(ours):
    stock_name, ncm, dataset_name, dataset_fixes, model_fixes = PAIRS[ours]
    expected = copy.deepcopy(yaml.safe_load(
        (STOCK / f'{stock_name}.yml').read_text()))
    dataset, model, pipeline = (expected[k] for k in ('dataset', 'model',
                                                      'pipeline'))
    dataset.update(name=dataset_name,
                   test_result_folder=f'./logs/{ours}/test', **dataset_fixes)
    model.update(name='NCM' + model['name'], ncm=ncm, **model_fixes)
    pipeline.update(name='NCMSemanticSegmentation',
                    main_log_dir=f'./logs/{ours}')
    got = load_config(resolve_config(f'{ours}.yml'))
    assert got == expected


@pytest.mark.parametrize('ours', sorted(PAIRS))
def test_config_passes_the_checks(ours):
    path = resolve_config(f'{ours}.yml')
    check_config(load_config(path), path)


@pytest.mark.parametrize('ours, key, value', [
    ('ncm_pointtransformer_s3dis', 'neighborhood', 'model'),
    ('ncm_randlanet_s3dis', 'layer', 1),
    ('ncm_sparseconvunet_scannet', 'target', 'scene'),
])
def test_settings_a_backbone_cannot_honour_stop_the_check_naming_the_key(
        ours, key, value):
    from ncm_plugin.tools.config_check import ConfigError
    path = resolve_config(f'{ours}.yml')
    cfg = load_config(path)
    cfg['model']['ncm'][key] = value
    cfg['model']['ncm'].pop('k', None)
    with pytest.raises(ConfigError, match=f'model.ncm.{key}'):
        check_config(cfg, path)


def test_an_ncm_block_on_a_stock_model_names_the_ncm_model():
    from ncm_plugin.tools.config_check import ConfigError
    path = resolve_config('ncm_randlanet_s3dis.yml')
    cfg = load_config(path)
    cfg['model']['name'] = 'RandLANet'
    with pytest.raises(ConfigError, match='NCMRandLANet'):
        check_config(cfg, path)
