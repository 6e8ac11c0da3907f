"""Applying a KPConv model to a whole cloud: a planned covering whose
spheres hold every point, batches the batcher never cuts, scores averaged
over the passes that saw a point, votes that can be recomputed alone."""
import numpy as np
import pytest
import torch

from conftest import TINY_MODEL, tiny_scene
from ncm_plugin.inference.engine import predict_cloud
from ncm_plugin.inference.votes import vote_transform
from ncm_plugin.inference.layout import batches_of, sphere_centres
from ncm_plugin.models import NCMKPFCNN


def test_every_point_lies_inside_a_sphere_of_the_covering():
    rng = np.random.default_rng(0)
    points = np.r_[rng.uniform(0, 10, (3000, 3)) * [1, 1, 0.1],
                   rng.uniform(4, 5, (500, 3))]
    radius = 1.5
    centres = sphere_centres(points, radius)
    distance = np.sqrt(((points[:, None] - centres[None]) ** 2).sum(-1))
    assert distance.min(axis=1).max() <= radius * np.sqrt(1.5) / 2 + 1e-9
    spacing = radius / np.sqrt(2)
    occupied = {tuple(c) for c in np.floor(
        (points - points.min(0)) / spacing).astype(int)}
    assert len(centres) == len(occupied)


def test_batches_keep_the_order_and_never_exceed_the_limit():
    sizes = [5, 3, 9, 12, 1, 1, 7]
    groups = batches_of(sizes, 10)
    assert [i for g in groups for i in g] == list(range(len(sizes)))
    assert all(sum(sizes[i] for i in g) <= 10 or len(g) == 1 for g in groups)
    assert groups == [[0, 1], [2], [3], [4, 5, 6]]


def test_vote_0_is_the_identity_and_the_others_are_seeded_turns():
    cfg = {'augment_rotation': 'vertical', 'augment_scale_min': 0.9,
           'augment_scale_max': 1.1, 'augment_scale_anisotropic': True,
           'augment_symmetries': [True, False, False]}
    R, scale = vote_transform(cfg, 0)
    assert np.array_equal(R, np.eye(3)) and np.array_equal(scale, np.ones(3))
    R, scale = vote_transform(cfg, 3, seed=5)
    again = vote_transform(cfg, 3, seed=5)
    assert np.array_equal(R, again[0]) and np.array_equal(scale, again[1])
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-6)
    assert R[2, 2] == 1 and np.all(np.abs(scale[1:]) >= 0.9)
    assert np.all(np.abs(scale) <= 1.1)


@pytest.fixture(scope='module')
def model_and_cloud():
    torch.manual_seed(0)
    model = NCMKPFCNN(**{**TINY_MODEL, 'in_radius': 0.6,
                         'augment_rotation': 'vertical',
                         'augment_scale_min': 0.9, 'augment_scale_max': 1.1,
                         'augment_symmetries': [True, False, False]})
    scene = tiny_scene(0, 3000)
    data = model.preprocess(scene, {'split': 'test'})
    return model, data


def test_every_preprocessed_point_gets_probabilities(model_and_cloud):
    model, data = model_and_cloud
    scores = predict_cloud(model, data, votes=1, seed=1)
    assert scores.probabilities.shape == (len(data['point']), 3)
    np.testing.assert_allclose(scores.probabilities.sum(1), 1, atol=1e-5)
    assert scores.spheres > 1 and (scores.passes > 0).all()
    again = predict_cloud(model, data, votes=1, seed=1)
    assert np.array_equal(scores.probabilities, again.probabilities)


def test_votes_average_the_passes_of_each_vote(model_and_cloud):
    """The vote average recomputed from each vote run alone."""
    model, data = model_and_cloud
    both = predict_cloud(model, data, votes=2, seed=1)
    first = predict_cloud(model, data, seed=1, vote_indices=[0])
    second = predict_cloud(model, data, seed=1, vote_indices=[1])
    expected = (first.probabilities * first.passes[:, None] +
                second.probabilities * second.passes[:, None]) / \
        (first.passes + second.passes)[:, None]
    np.testing.assert_allclose(both.probabilities, expected, atol=1e-5)
    assert not np.allclose(first.probabilities, second.probabilities)


def test_batches_of_at_most_count_spheres():
    assert batches_of([5, 3, 1, 1, 1], 10, count=2) == [[0, 1], [2, 3], [4]]


def test_worker_built_batches_give_the_same_scores_bit_for_bit(
        model_and_cloud):
    """The same batches (of two spheres) built here or by a worker. (Other
    batch sizes move the scores by ~1e-4: KPConv pads its pooling lists to
    the batch's longest row with a zero feature, which enters the max.)"""
    model, data = model_and_cloud
    here = predict_cloud(model, data, votes=2, seed=1, batch_size=2)
    workers = predict_cloud(model, data, votes=2, seed=1, batch_size=2,
                            num_workers=1)
    np.testing.assert_array_equal(here.passes, workers.passes)
    np.testing.assert_array_equal(here.probabilities, workers.probabilities)
