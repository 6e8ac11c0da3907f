"""The prediction engine for the backbones other than KPConv: RandLA-Net's
own crops (its num_points nearest points where the cloud is least
covered), PointTransformer and SparseConvUnet on the whole scene; batches
of --batch-size, built by DataLoader workers or here, give the same scores;
ncm-predict applies a trained RandLA-Net end to end.

References are computed here: the crops against a brute-force nearest-point
sort and a loop that replays the possibilities, the scores against each
pass run alone through the stock transform and batcher, averaged in numpy.
"""
import numpy as np
import pytest
import torch
from open3d._ml3d.torch.dataloaders import ConcatBatcher, DefaultBatcher
from sklearn.neighbors import KDTree

from conftest import tiny_scene
from ncm_plugin.config import load_config, resolve_config
from ncm_plugin.inference.crops import CropCovering, plan_crops
from ncm_plugin.inference.engine import predict_cloud
from ncm_plugin.inference.trained import build
from ncm_plugin.inference.votes import vote_transform

TINY = {
    'ncm_randlanet_s3dis': dict(num_points=512, num_layers=2,
                                sub_sampling_ratio=[4, 4],
                                dim_output=[8, 16], num_neighbors=8),
    'ncm_pointtransformer_s3dis': dict(blocks=[1, 1, 1, 1, 1],
                                       voxel_size=0.02),
    'ncm_sparseconvunet_scannet': dict(multiplier=4, voxel_size=0.1),
}


def tiny_model(config):
    model = build({**load_config(resolve_config(f'{config}.yml'))['model'],
                   **TINY[config]}, seed=0)
    return model.eval()


@pytest.fixture(scope='module')
def scene():
    return tiny_scene(0, 12000)


def preprocessed(model, scene):
    return model.preprocess(dict(scene), {'split': 'test'})


def test_crops_are_nearest_points_until_every_point_is_covered():
    points = np.random.default_rng(1).uniform(0, 4, (900, 3))
    points[:, 2] *= 0.1
    crops = plan_crops(points, KDTree(points), 64, np.random.default_rng(2))
    possibility = np.random.default_rng(2).random(len(points)) * 1e-3
    for number, (centre, indices) in enumerate(crops):
        assert possibility.min() <= 0.5  # not covered yet: one more crop
        assert centre == np.argmin(possibility)
        d2 = ((points - points[centre]) ** 2).sum(axis=1)
        assert set(indices) == set(np.argsort(d2)[:64])
        for i in indices:
            possibility[i] += (1 - d2[i] / d2[indices].max()) ** 2
    assert possibility.min() > 0.5
    assert 900 / 64 < len(crops) < 10 * 900 / 64


def randlanet_reference(model, data, votes, seed):
    """Mean softmax of every crop of the engine's covering, each crop run
    alone (batch of one, the stock DefaultBatcher), turned here."""
    covering = CropCovering(model, data, votes, seed)
    sums = np.zeros((len(data['point']), model.cfg.num_classes))
    counts = np.zeros(len(data['point']))
    for [(vote, _, centre, indices)] in covering.jobs:
        R, scale = vote_transform(model.cfg, vote, seed)
        origin = data['point'][centre]
        crop = {'point': ((data['point'][indices] - origin) @ R.T * scale +
                          origin).astype(np.float32),
                'feat': data['feat'][indices], 'search_tree': None,
                'label': np.zeros(len(indices), np.int32)}
        model.trans_point_sampler = lambda pc=None, **_: (
            pc, np.arange(len(pc)), origin[None])
        item = model.transform(crop, {'split': 'test'})
        batch = DefaultBatcher().collate_fn([{'data': item, 'attr': {}}])
        with torch.no_grad():
            logits = model(batch['data'])[0]
        sums[indices] += torch.softmax(logits, 1).numpy()
        counts[indices] += 1
    return sums / counts[:, None]


def scene_reference(model, data, votes, seed):
    """Mean softmax of the scene and of its turned copies (about the
    centre, lowest corner kept), each through the stock ConcatBatcher."""
    total = 0
    for vote in votes:
        points = data['point'].astype(np.float64)
        R, scale = vote_transform(model.cfg, vote, seed)
        middle = (points.min(0) + points.max(0)) / 2
        turned = (points - middle) @ R.T.astype(np.float64) * scale
        turned += points.min(0) - turned.min(0)
        item = model.transform({'point': turned.astype(np.float32),
                                'feat': data['feat'],
                                'label': np.zeros(len(points), np.int32)},
                               {'split': 'test'})
        batch = ConcatBatcher('cpu', model.stock_name).collate_fn(
            [{'data': item, 'attr': {}}])
        with torch.no_grad():
            total = total + torch.softmax(model(batch['data']), 1).numpy()
    return total / len(votes)


@pytest.mark.parametrize('config', sorted(TINY))
def test_scores_are_the_mean_of_each_pass_run_alone(config, scene):
    model = tiny_model(config)
    data = preprocessed(model, scene)
    scores = predict_cloud(model, data, votes=2, seed=3, batch_size=3)
    reference = (randlanet_reference if 'randlanet' in config
                 else scene_reference)(model, data, [0, 1], 3)
    assert scores.passes.min() >= 2  # every point in a pass of each vote
    np.testing.assert_allclose(scores.probabilities, reference, atol=2e-5)


def test_workers_and_batch_sizes_give_the_same_scores(scene):
    model = tiny_model('ncm_randlanet_s3dis')
    data = preprocessed(model, scene)
    alone = predict_cloud(model, data, votes=2, seed=0, batch_size=1)
    here = predict_cloud(model, data, votes=2, seed=0, batch_size=4)
    workers = predict_cloud(model, data, votes=2, seed=0, batch_size=4,
                            num_workers=2)
    np.testing.assert_array_equal(here.passes, workers.passes)
    np.testing.assert_array_equal(here.probabilities, workers.probabilities)
    np.testing.assert_allclose(alone.probabilities, here.probabilities,
                               atol=1e-6)


def test_pvcnn_is_refused_with_the_reason(tmp_path):
    from ncm_plugin.inference.engine import covering_class
    model = build(load_config(resolve_config('ncm_pvcnn_s3dis.yml'))['model'],
                  seed=0)
    with pytest.raises(ValueError, match='PVCNN.*no CPU kernel'):
        covering_class(model)


def test_the_command_applies_a_trained_randlanet_to_every_point(
        tmp_path, scene):
    """Trained for a few steps through the runner, applied by ncm-predict
    with batches of two crops built by a worker: every point labelled, its
    probabilities those of the engine run here on the same cloud."""
    from ncm_plugin.datasets.demo import write_demo
    from ncm_plugin.inference.trained import load_trained
    from ncm_plugin.tools.predict import main as predict
    from ncm_plugin.tools.runner import main as run
    data_root = tmp_path / 's3dis'
    write_demo('s3dis', data_root, seed=0, areas=(1, 3))
    shrink = [arg for key, value in TINY['ncm_randlanet_s3dis'].items()
              for arg in (f'--model.{key}', str(value))]
    run(['torch', '-c', 'ncm_randlanet_s3dis.yml', '--dataset_path',
         str(data_root), '--device', 'cpu', '--main_log_dir',
         str(tmp_path / 'logs'), '--dataset.cache_dir', str(tmp_path / 'c'),
         '--pipeline.max_epoch', '0', '--dataset.steps_per_epoch_train', '2',
         '--dataset.steps_per_epoch_valid', '1', '--pipeline.batch_size', '2',
         '--pipeline.val_batch_size', '1', '--pipeline.test_after_train',
         'false', *shrink])
    [ckpt] = (tmp_path / 'logs').rglob('ckpt_*.pth')
    cloud = tmp_path / 'scan.npz'
    np.savez(cloud, point=scene['point'], colour=scene['feat'])
    predict(['--ckpt', str(ckpt), str(cloud), '--out', str(tmp_path / 'out'),
             '--batch-size', '2', '--num-workers', '1', '--votes', '2'])
    out = np.load(tmp_path / 'out' / 'scan.npz')
    model = load_trained(ckpt).model
    data = preprocessed(model, scene)
    expected = predict_cloud(model, data, votes=2, seed=0).probabilities[
        data['proj_inds']]
    assert len(out['label']) == len(scene['point'])
    np.testing.assert_allclose(out['probabilities'], expected, atol=1e-6)
    np.testing.assert_array_equal(out['label'], expected.argmax(axis=1))
