"""NCMSemanticSegmentation: dispatch, sphere check, loss-term logs (workers:
test_samplers.py)."""
import math
import re

import pytest
import torch
from open3d._ml3d.utils import Config, get_module

from conftest import TINY_MODEL
from tiny_training import make_pipeline, write_cached_s3dis
from ncm_plugin.training.pipeline import (DegenerateSpheresError,
                                          NCMSemanticSegmentation, check_spheres)


@pytest.fixture(scope='module')
def cached_s3dis(tmp_path_factory):
    """Two rooms per area in the stock S3DIS cache format (original_pkl)."""
    return write_cached_s3dis(tmp_path_factory.mktemp('s3dis'))


def test_pipeline_is_registered():
    assert get_module('pipeline', 'NCMSemanticSegmentation',
                      'torch') is NCMSemanticSegmentation


def test_batcher_dispatches_on_the_class(cached_s3dis, tmp_path):
    pipeline = make_pipeline(cached_s3dis, tmp_path)
    assert pipeline.model.cfg.name == 'NCMKPFCNN'
    assert pipeline.get_batcher('cpu').model == 'KPFCNN'


def test_spheres_are_judged_against_the_points_within_their_radius():
    cfg = Config({'in_radius': 2.0, 'first_subsampling_dl': 0.04,
                  'max_in_points': 40000, 'batch_limit': 200000})
    with pytest.raises(DegenerateSpheresError, match='SemSegRandomSampler'):
        check_spheres([3, 3, 3], [6000, 8000, 7000], cfg, 'SemSegRandomSampler')
    check_spheres([6000, 9000, 400], [6000, 9000, 400], cfg,
                  'SharedSpatiallyRegularSampler')
    # Sparse clouds: few points within the radius, all of them in the sphere.
    check_spheres([12, 9, 20], [12, 9, 20], cfg, 'SharedSpatiallyRegularSampler')


def test_the_stock_random_sampler_is_refused_with_a_true_message(tmp_path):
    rooms = write_cached_s3dis(tmp_path / 'rooms', areas=(1, 5), rooms=1)
    pipeline = make_pipeline(rooms, tmp_path, sampler='SemSegRandomSampler',
                             max_epoch=0)
    with pytest.raises(DegenerateSpheresError,
                       match=r"hold 3 points on average .* their clouds hold "
                       r"\d+ on average within model.in_radius=1.0 .*"
                       r"'SemSegRandomSampler' does not crop spheres"):
        pipeline.run_train()


def test_sparse_clouds_train(tmp_path, caplog):
    """About 2 points per m2 (a seeded run): a sphere holds less than 5 %
    of what a plane sampled at the grid step would (the old check refused
    that), and all the points its cloud has within the radius."""
    rooms = write_cached_s3dis(tmp_path / 'rooms', areas=(1, 5), rooms=1,
                               points=60)
    pipeline = make_pipeline(rooms, tmp_path, max_epoch=0)
    pipeline.seed = 5  # the sphere choices, hence their sizes, are fixed
    with caplog.at_level('INFO'):
        pipeline.run_train()
    assert pipeline.epoch_timings[0]['steps'] == 3
    mean = float(re.search(r'Training spheres: (\d+) points on average',
                           caplog.text).group(1))
    plane = math.pi * (TINY_MODEL['in_radius'] /
                       TINY_MODEL['first_subsampling_dl']) ** 2
    assert 0 < mean < 0.05 * plane


def test_the_loss_of_an_unlabelled_step_is_a_finite_zero_under_fp16():
    """fp16 logits of a large batch sum to inf, and inf * 0 is NaN: the zero
    loss is taken in float32, and still reaches every output."""
    from ncm_plugin.training.pipeline import unlabelled_loss
    logits = torch.full((60000, 13), 2.0, dtype=torch.float16,
                        requires_grad=True)
    assert torch.isnan(logits.sum() * 0.0)  # what the step used to take
    loss = unlabelled_loss(logits)
    assert loss.dtype == torch.float32 and loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
