"""Shared fixtures: a tiny KPConv configuration and a tiny synthetic scene."""
import io
import pickle

import numpy as np
import pytest
import torch

import ncm_plugin  # noqa: F401  (fills Open3D-ML's registries)

TINY_MODEL = dict(
    num_classes=3,
    lbl_values=[0, 1, 2],
    ignored_label_inds=[],
    architecture=['simple', 'resnetb', 'resnetb_strided', 'resnetb_deformable',
                  'nearest_upsample', 'unary'],
    num_layers=2,
    first_features_dim=16,
    in_features_dim=5,
    in_radius=1.0,
    first_subsampling_dl=0.1,
    max_in_points=5000,
    batch_limit=20000,
    num_kernel_points=15,
    batch_norm_momentum=0.02,
    augment_color=1.0,
    t_normalize={'method': 'linear', 'normalize_points': False,
                 'feat_bias': 0, 'feat_scale': 255},
)


def tiny_run_overrides(in_radius, first_subsampling_dl):
    """Command-line overrides that shrink a dataset config to a seconds-long
    CPU run: one pass over a few spheres with a two-layer KPConv deform."""
    return ['--pipeline.max_epoch', '0', '--dataset.steps_per_epoch_train', '4',
            '--dataset.steps_per_epoch_valid', '2', '--pipeline.batch_size', '2',
            '--pipeline.val_batch_size', '2', '--pipeline.test_batch_size', '4',
            '--pipeline.num_workers', '0', '--model.num_layers', '2',
            '--model.architecture', '[simple, resnetb, resnetb_strided, '
            'resnetb_deformable, nearest_upsample, unary]',
            '--model.first_features_dim', '16',
            '--model.in_radius', str(in_radius),
            '--model.first_subsampling_dl', str(first_subsampling_dl),
            '--model.max_in_points', '1500', '--model.batch_limit', '20000']


def train_then_test(config, dataset_path, root, extra_args):
    """Train (0 epochs = one pass) then test a config through the command
    line's main, with logs, cache and test results under `root`."""
    from ncm_plugin.tools.runner import main
    argv = ['torch', '-c', config, '--dataset_path', str(dataset_path),
            '--device', 'cpu', '--main_log_dir', str(root / 'logs'),
            '--dataset.cache_dir', str(root / 'cache'),
            '--dataset.test_result_folder', str(root / 'test')] + list(extra_args)
    main(argv)
    main(argv + ['--split', 'test'])
    return root


@pytest.fixture(scope='module')
def scannet(tmp_path_factory):
    """Generated ScanNet scenes (two training, one validation, one test),
    converted."""
    from ncm_plugin.datasets.scannet.convert import convert_scannet
    from ncm_plugin.datasets.scannet.synthetic import write_demo_scannet
    raw = tmp_path_factory.mktemp('scannet_raw')
    write_demo_scannet(raw, seed=1, scenes={
        'train': ('scene0000_00', 'scene0001_00'), 'val': ('scene0011_00',),
        'test': ('scene0707_00',)})
    out = tmp_path_factory.mktemp('scannet')
    convert_scannet(raw, out, workers=1)
    return out


@pytest.fixture(autouse=True, scope='session')
def kernel_cache(tmp_path_factory):
    """KPConv writes its kernel dispositions to ./kernels: keep them in tmp."""
    mp = pytest.MonkeyPatch()
    mp.chdir(tmp_path_factory.mktemp('cwd'))
    yield
    mp.undo()


def tiny_scene(seed=0, num_points=3000):
    """A floor (label 0), a wall (label 1) and a box (label 2), with colours."""
    rng = np.random.default_rng(seed)
    third = num_points // 3
    floor = np.c_[rng.uniform(-1, 1, (third, 2)), np.zeros(third)]
    wall = np.c_[rng.uniform(-1, 1, third), np.full(third, 1.0),
                 rng.uniform(0, 1, third)]
    box = rng.uniform([-0.3, -0.3, 0.0], [0.3, 0.3, 0.5], (third, 3))
    points = np.concatenate([floor, wall, box]).astype(np.float32)
    labels = np.repeat(np.arange(3), third).astype(np.int32)
    colours = np.array([[120, 100, 80], [200, 200, 200], [40, 60, 160]])
    feat = (colours[labels] + rng.normal(0, 10, (len(labels), 3))).astype(
        np.float32)
    return {'point': points, 'feat': feat, 'label': labels}


def whole_cloud_sampler(pc, **kwargs):
    """Point sampler that takes every point, centred on the cloud's centre."""
    idxs = np.arange(len(pc))
    return pc, idxs, pc.mean(axis=0, keepdims=True)


def kpconv_batch(model, scenes, split='training'):
    """Run Open3D-ML's preprocess, transform and ConcatBatcher on scenes."""
    from open3d._ml3d.torch.dataloaders import ConcatBatcher
    model.trans_point_sampler = whole_cloud_sampler
    items = []
    for scene in scenes:
        attr = {'split': split, 'name': 'tiny', 'idx': 0}
        data = model.transform(model.preprocess(scene, attr), attr)
        items.append({'data': data, 'attr': attr})
    return ConcatBatcher('cpu', 'KPFCNN').collate_fn(items)


class _NoTensorPickler(pickle.Pickler):
    """A pickler that fails on any torch.Tensor (a worker must get none)."""

    def reducer_override(self, obj):
        if isinstance(obj, torch.Tensor):
            raise AssertionError(f"a {obj.device} tensor of shape "
                                 f"{tuple(obj.shape)} would be pickled")
        return NotImplemented


def assert_pickles_without_tensors(obj):
    """Pickle `obj` as a DataLoader worker's payload would be, refusing
    tensors."""
    _NoTensorPickler(io.BytesIO()).dump(obj)
