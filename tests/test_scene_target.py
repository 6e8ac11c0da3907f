"""model.ncm.target: scene — the whole scene's target NCM, cached with the
preprocessed scene and carried into the batch."""
import numpy as np
import pytest
import torch
from open3d._ml3d.torch.dataloaders import ConcatBatcher

from conftest import TINY_MODEL, tiny_scene, whole_cloud_sampler
from ncm_plugin.losses import NCMConfig
from ncm_plugin.models import NCMKPFCNN
from ncm_plugin.ncm import ncm_kl
from ncm_plugin.scene_target import layer0_radius, scene_target
from ncm_plugin.training.batcher import NCMConcatBatcher


def brute_force_ncm(points, labels, num_classes, ignored, close):
    """Double loop over all pairs: S[a, b] += 1 for i != j, both valid, and
    close(i, j); normalised."""
    keep = [k for k in range(num_classes + len(ignored)) if k not in ignored]
    counts = np.zeros((num_classes, num_classes))
    for i in range(len(points)):
        for j in range(len(points)):
            if i != j and labels[i] not in ignored and \
                    labels[j] not in ignored and close(i, j):
                counts[keep.index(labels[i]), keep.index(labels[j])] += 1
    return counts / counts.sum()


def small_scene(seed=0, n=150):
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, 1, (n, 3)).astype(np.float32)
    labels = rng.integers(0, 4, n)  # label 3 is ignored below
    return points, labels


def scene_model(**ncm):
    return NCMKPFCNN(**{**TINY_MODEL, 'num_classes': 3,
                        'ignored_label_inds': [], 'conv_radius': 2.5},
                     ncm={'target': 'scene', **ncm})


def test_scene_target_equals_a_brute_force_count_in_the_kpconv_radius():
    points, labels = small_scene()
    model = NCMKPFCNN(**{**TINY_MODEL, 'num_classes': 3,
                         'lbl_values': [0, 1, 2, 3], 'ignored_label_inds': [3],
                         'first_subsampling_dl': 0.1, 'conv_radius': 2.5},
                      ncm={'target': 'scene'})
    radius = layer0_radius(model.cfg)
    assert radius == pytest.approx(0.25)
    distance = np.linalg.norm(points[:, None] - points[None], axis=2)
    expected = brute_force_ncm(points, labels, 3, [3],
                               lambda i, j: distance[i, j] <= radius)
    got = scene_target(points, labels, model.cfg, model.ncm_loss.cfg)
    assert got.dtype == np.float32 and got.shape == (3, 3)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_scene_target_equals_a_brute_force_count_of_k_nearest_neighbors():
    points, labels = small_scene(1, 80)
    model = scene_model(neighborhood='knn', k=5)
    labels = labels % 3
    distance = np.linalg.norm(points[:, None] - points[None], axis=2)
    np.fill_diagonal(distance, np.inf)
    nearest = np.argsort(distance, axis=1)[:, :5]
    expected = brute_force_ncm(points, labels, 3, [],
                               lambda i, j: j in nearest[i])
    got = scene_target(points, labels, model.cfg, model.ncm_loss.cfg)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_deformable_first_layer_uses_the_deform_radius():
    model = scene_model()
    cfg = model.cfg
    assert layer0_radius(cfg) == pytest.approx(cfg.first_subsampling_dl * 2.5)
    cfg.architecture = ['simple', 'resnetb_deformable', 'resnetb_strided']
    assert layer0_radius(cfg) == pytest.approx(cfg.first_subsampling_dl * 6.0)


def test_target_is_validated():
    assert NCMConfig().target == 'sample'
    with pytest.raises(ValueError, match='model.ncm.target'):
        NCMConfig.from_dict({'target': 'room'})


def transformed_items(model, scenes):
    model.trans_point_sampler = whole_cloud_sampler
    items = []
    for i, scene in enumerate(scenes):
        attr = {'split': 'training', 'name': f'scene{i}', 'idx': i}
        data = model.preprocess(scene, attr)
        items.append((data, {'data': model.transform(data, attr),
                             'attr': attr}))
    return items


def test_scene_target_travels_with_the_scene_into_the_batch():
    model = scene_model()
    scenes = [tiny_scene(0, 1500), tiny_scene(1, 900)]
    items = transformed_items(model, scenes)
    for data, _ in items:
        expected = scene_target(data['point'], data['label'], model.cfg,
                                model.ncm_loss.cfg)
        np.testing.assert_array_equal(data['ncm_target'], expected)
        assert expected.sum() == pytest.approx(1.0)
    batch = NCMConcatBatcher().collate_fn([i for _, i in items])['data']
    assert batch.ncm_target.shape == (2, 3, 3)
    for k, (data, _) in enumerate(items):
        np.testing.assert_array_equal(batch.ncm_target[k].numpy(),
                                      data['ncm_target'])
    # The stock batcher takes the same items and builds the same batch.
    stock = ConcatBatcher('cpu', 'KPFCNN').collate_fn([i for _, i in items])
    assert torch.equal(stock['data'].points[0], batch.points[0])
    assert not hasattr(stock['data'], 'ncm_target')


def test_scene_loss_uses_the_carried_target():
    torch.manual_seed(0)
    model = scene_model()
    items = transformed_items(model, [tiny_scene(2, 1500), tiny_scene(3, 900)])
    batch = NCMConcatBatcher().collate_fn([i for _, i in items])['data']
    logits = torch.randn(len(batch.labels), 3)
    loss = model.ncm_loss(logits, batch.labels, batch)
    from ncm_plugin.losses import class_indices
    from ncm_plugin.ncm import cooccurrence_from_matrix, neighbor_matrix
    _, valid = class_indices(batch.labels, 3, [])
    adjacency = neighbor_matrix(batch.neighbors[0], batch.lengths[0], valid)
    prediction = cooccurrence_from_matrix(torch.softmax(logits, 1), adjacency,
                                          batch.lengths[0])
    assert float(loss) == pytest.approx(
        float(ncm_kl(batch.ncm_target, prediction)), rel=1e-5)
    # Whatever the batch carries is the target.
    batch.ncm_target = torch.full((2, 3, 3), 1 / 9)
    assert float(model.ncm_loss(logits, batch.labels, batch)) == pytest.approx(
        float(ncm_kl(batch.ncm_target, prediction)), rel=1e-5)
    del batch.ncm_target
    with pytest.raises(ValueError, match='NCMConcatBatcher'):
        model.ncm_loss(logits, batch.labels, batch)


def test_scene_settings_select_their_own_preprocessing_cache():
    sample = NCMKPFCNN(**TINY_MODEL)
    scene = scene_model()
    baseline_scene = scene_model(weight=0.0)
    assert 'target=scene' in repr(scene.preprocess)
    assert 'target=scene' not in repr(sample.preprocess)
    assert 'target=scene' not in repr(baseline_scene.preprocess)
    attr = {'split': 'training', 'name': 'x'}
    assert 'ncm_target' not in baseline_scene.preprocess(tiny_scene(), attr)
    with pytest.raises(KeyError, match='cache_dir'):
        scene.transform(sample.preprocess(tiny_scene(), attr), attr)
