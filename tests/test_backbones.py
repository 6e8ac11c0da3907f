"""Every NCM backbone: loss = stock loss + weight * KL of the NCMs, with the
NCMs from a brute-force reference on the same points and neighbors; weight
0 is the stock loss exactly.

PVCNN's Open3D ops (voxelize/devoxelize) have no CPU kernel in the CPU
wheel: its loss is tested on a prepared batch with given logits."""
import pickle

import numpy as np
import pytest
import torch
from open3d._ml3d.datasets.samplers import SemSegRandomSampler
from open3d._ml3d.torch.dataloaders import ConcatBatcher, DefaultBatcher
from open3d._ml3d.torch.models import (PVCNN, PointTransformer, RandLANet,
                                       SparseConvUnet)
from open3d._ml3d.torch.modules.losses import SemSegLoss
from open3d._ml3d.utils import Config, get_module

from backbone_reference import (brute_knn_distances, class_columns, one_hot,
                                reference_kl, reference_ncm, softmax)
from conftest import assert_pickles_without_tensors, tiny_scene
from ncm_plugin.models import (NCMPointTransformer, NCMPVCNN, NCMRandLANet,
                               NCMSparseConvUnet, NCMTerm)
from ncm_plugin.training.batcher import NCMStockBatcher
from ncm_plugin.training.items import SeededItemDataset

RANDLANET = dict(num_points=512, num_layers=2, sub_sampling_ratio=[4, 4],
                 dim_output=[8, 16], dim_features=8, num_neighbors=8,
                 num_classes=3, in_channels=6, grid_size=0.04,
                 ignored_label_inds=[], augment={})
POINTTRANSFORMER = dict(in_channels=6, blocks=[1, 1, 1, 1, 1], num_classes=3,
                        voxel_size=0.01, max_voxels=8000,
                        ignored_label_inds=[-1], augment={})
SPARSECONVUNET = dict(multiplier=8, voxel_size=0.05, in_channels=3,
                      num_classes=3, conv_block_reps=1,
                      ignored_label_inds=[-1], augment={})
PVCNN_CFG = dict(num_classes=3, num_points=256, extra_feature_channels=6,
                 width_multiplier=0.25, voxel_resolution_multiplier=0.5,
                 ignored_label_inds=[], augment={})

BACKBONES = {
    # name: (stock class, NCM class, settings, batcher, neighborhoods)
    'RandLANet': (RandLANet, NCMRandLANet, RANDLANET, 'DefaultBatcher',
                  ('model', 'knn')),
    'PointTransformer': (PointTransformer, NCMPointTransformer,
                         POINTTRANSFORMER, 'ConcatBatcher', ('knn',)),
    'SparseConvUnet': (SparseConvUnet, NCMSparseConvUnet, SPARSECONVUNET,
                       'ConcatBatcher', ('knn',)),
    'PVCNN': (PVCNN, NCMPVCNN, PVCNN_CFG, 'DefaultBatcher', ('knn',)),
}
CASES = [(name, hood) for name, spec in BACKBONES.items() for hood in spec[4]]


class FakeDataset:
    """What SemSegLoss reads from a dataset: its class weights."""
    cfg = Config({'class_weights': [100, 300, 50]})


def scene(seed, points):
    """tiny_scene; with ignored label -1 on a few points where the backbone
    ignores -1."""
    return tiny_scene(seed, points)


def make_batch(model, name):
    """preprocess, transform, the stock batcher, then ncm_collate."""
    np.random.seed(3)
    model.rng = np.random.default_rng(3)
    model.trans_point_sampler = SemSegRandomSampler.get_point_sampler()
    points = 6000 if name == 'PointTransformer' else 3000
    items = []
    for seed in (0, 1):
        data = scene(seed, points)
        if -1 in model.cfg.ignored_label_inds:
            data['label'][::50] = -1
        if name == 'SparseConvUnet':
            data['point'] = data['point'] * 2
        attr = {'split': 'training', 'name': f'tiny{seed}', 'idx': seed}
        items.append({'data': model.transform(model.preprocess(data, attr),
                                              attr), 'attr': attr})
    batcher = (DefaultBatcher() if BACKBONES[name][3] == 'DefaultBatcher'
               else ConcatBatcher('cpu', name))
    inputs = batcher.collate_fn(items)
    inputs['data'] = model.ncm_collate(inputs['data'])
    return inputs


def logits_of(model, name, inputs):
    """The model's forward pass; PVCNN (no CPU kernels): given logits."""
    if name == 'PVCNN':
        batch = inputs['data']
        gen = torch.Generator().manual_seed(0)
        shape = (batch['point'].shape[0], batch['point'].shape[2], 3)
        return torch.randn(shape, generator=gen).requires_grad_()
    torch.manual_seed(0)
    model.train()
    model.device = torch.device('cpu')  # set by the pipeline otherwise
    return model(inputs['data'])


def reference_inputs(name, inputs, results, hood):
    """(scores [M, C], label distributions [M, C], neighbors [M, K], cloud
    [M], valid [M]) of the points the NCM is taken on, by hand."""
    batch = inputs['data']
    cfg = BACKBONES[name][2]
    num_classes = cfg['num_classes']
    logits = results.detach().reshape(-1, num_classes).numpy()
    if name in ('RandLANet', 'PVCNN'):
        labels = (batch['labels'] if name == 'RandLANet' else batch['label'])
        num_clouds, num_points = labels.shape
        cloud = np.repeat(np.arange(num_clouds), num_points)
        if hood == 'model':
            local = batch['neighbor_indices'][0].numpy()
            neighbors = (local + (np.arange(num_clouds) *
                                  num_points)[:, None, None]).reshape(
                                      num_clouds * num_points, -1)
        else:
            neighbors = batch['ncm_neighbors'].numpy()
    elif name == 'PointTransformer':
        labels = batch.label
        splits = batch.row_splits.numpy()
        cloud = np.repeat(np.arange(len(splits) - 1), np.diff(splits))
        neighbors = batch.ncm_neighbors.numpy()
    else:
        return voxel_reference(batch, logits, num_classes, cfg)
    columns, valid = class_columns(labels.numpy(), cfg['ignored_label_inds'])
    return (softmax(logits), one_hot(columns, valid, num_classes), neighbors,
            cloud, valid)


def voxel_reference(batch, logits, num_classes, cfg):
    """SparseConvUnet: one entry per voxel (the floor of its points'
    coordinates in voxel units, per cloud), its logits' softmax, the mean
    one-hot of its valid points, valid when it has one. The voxels are
    matched to the batch's by their points, so the batch's voxel kNN lists
    apply."""
    points = torch.cat(batch.point).numpy()
    labels = torch.cat(batch.label).numpy()
    cloud_of = np.repeat(np.arange(len(batch.batch_lengths)),
                         batch.batch_lengths)
    groups = {}
    for i, (c, p) in enumerate(zip(cloud_of, np.floor(points).astype(int))):
        groups.setdefault((c, *p), []).append(i)
    members = batch.ncm_members.numpy()
    assert members.shape[1] > 1, "no voxel with several points: untested"
    columns, valid_points = class_columns(labels, cfg['ignored_label_inds'])
    hot = one_hot(columns, valid_points, num_classes)
    probs = softmax(logits)
    scores, dists, valid, cloud = [], [], [], []
    for row in members:
        mine = sorted(int(i) for i in row if i < len(points))
        key = (cloud_of[mine[0]], *np.floor(points[mine[0]]).astype(int))
        assert groups[key] == mine, "a voxel of the batch is not one voxel"
        assert np.allclose(probs[mine], probs[mine[0]]), \
            "the points of a voxel have different logits"
        good = [i for i in mine if valid_points[i]]
        scores.append(probs[mine[0]])
        dists.append(hot[good].mean(0) if good else np.zeros(num_classes))
        valid.append(bool(good))
        cloud.append(key[0])
    assert len(members) == len(groups)
    return (np.array(scores), np.array(dists), batch.ncm_neighbors.numpy(),
            np.array(cloud), np.array(valid))


def reference_loss_term(name, inputs, results, hood, direction, weight):
    scores, labels, neighbors, cloud, valid = reference_inputs(
        name, inputs, results, hood)
    target = reference_ncm(labels, neighbors, cloud, valid)
    prediction = reference_ncm(scores, neighbors, cloud, valid)
    return weight * reference_kl(target, prediction, direction)


@pytest.fixture(scope='module')
def prepared():
    """{(backbone, neighborhood): (model, inputs, results)}, built once."""
    cache = {}

    def get(name, hood):
        if (name, hood) not in cache:
            _, Model, cfg, _, _ = BACKBONES[name]
            torch.manual_seed(0)
            model = Model(**cfg, ncm={'weight': 1.0, 'neighborhood': hood})
            inputs = make_batch(model, name)
            cache[name, hood] = (model, inputs,
                                 logits_of(model, name, inputs))
        return cache[name, hood]
    return get


def loss_of(model, results, inputs):
    loss_fn = SemSegLoss(None, model, FakeDataset, 'cpu')
    return model.get_loss(loss_fn, results, inputs, 'cpu')[0]


@pytest.mark.parametrize('name', BACKBONES)
def test_models_are_registered_subclasses_of_the_stock_ones(name):
    Stock, Model = BACKBONES[name][:2]
    assert get_module('model', Model.__name__, 'torch') is Model
    assert issubclass(Model, Stock) and issubclass(Model, NCMTerm)
    assert Model.stock_class() is Stock


@pytest.mark.parametrize('name, hood', CASES)
@pytest.mark.parametrize('direction, weight', [('forward', 0.7),
                                               ('reverse', 2.0)])
def test_loss_is_stock_loss_plus_weighted_kl_of_reference_ncms(
        prepared, name, hood, direction, weight):
    Stock, Model, cfg, _, _ = BACKBONES[name]
    _, inputs, results = prepared(name, hood)
    ours = Model(**cfg, ncm={'weight': weight, 'direction': direction,
                             'neighborhood': hood})
    stock = Stock(**cfg)
    expected = float(loss_of(stock, results, inputs).detach()) + \
        reference_loss_term(
            name, inputs, results, hood, direction, weight)
    got = loss_of(ours, results, inputs)
    assert float(got.detach()) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert float(ours.loss_terms['ncm']) > 0
    gradient, = torch.autograd.grad(got, results, retain_graph=True)
    assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0


@pytest.mark.parametrize('name, hood', CASES)
def test_weight_zero_is_the_stock_loss_exactly(prepared, name, hood):
    Stock, Model, cfg, _, _ = BACKBONES[name]
    _, inputs, results = prepared(name, hood)
    ours = Model(**cfg, ncm={'weight': 0.0, 'neighborhood': hood})
    stock = Stock(**cfg)
    assert torch.equal(loss_of(ours, results, inputs),
                       loss_of(stock, results, inputs))
    assert set(ours.loss_terms) == {'cross_entropy'}


@pytest.mark.parametrize('name', ['RandLANet', 'PointTransformer',
                                  'SparseConvUnet'])
def test_collated_knn_lists_are_the_nearest_points(prepared, name):
    """The kNN lists ncm_collate builds hold, for every point (SparseConvUnet:
    voxel centre), the k nearest others of its cloud (checked by distance,
    which ties on a voxel grid leave unambiguous)."""
    model, inputs, _ = prepared(name, 'knn')
    batch = inputs['data']
    k = model.ncm_loss.cfg.k
    if name == 'RandLANet':
        coords = batch['coords'][0]
        points = coords.reshape(-1, 3).numpy()
        cloud = np.repeat(np.arange(coords.shape[0]), coords.shape[1])
    elif name == 'PointTransformer':
        points = batch.point.numpy()
        cloud = np.repeat(np.arange(len(batch.row_splits) - 1),
                          np.diff(batch.row_splits.numpy()))
    else:
        all_points = torch.cat(batch.point).numpy()
        points = np.floor(all_points[batch.ncm_members[:, 0].numpy()]) + 0.5
        cloud = np.repeat(np.arange(len(batch.ncm_lengths)),
                          batch.ncm_lengths.numpy())
    neighbors = batch['ncm_neighbors'] if isinstance(batch, dict) else \
        batch.ncm_neighbors
    neighbors = neighbors.numpy()
    assert neighbors.shape == (len(points), k)
    got = np.sort(np.linalg.norm(points[neighbors] - points[:, None], axis=2),
                  axis=1)
    np.testing.assert_allclose(got, brute_knn_distances(points, cloud, k),
                               rtol=1e-5, atol=1e-5)


def test_randlanet_own_lists_are_its_first_layer_knn(prepared):
    """neighborhood 'model' reads neighbor_indices[0] (the point itself
    among them, left out of the NCM)."""
    model, inputs, _ = prepared('RandLANet', 'model')
    layout = model.ncm_layout(torch.zeros(2, 512, 3), inputs['data'])
    local = inputs['data']['neighbor_indices'][0]
    assert torch.equal(layout.neighbors[512:], local[1] + 512)
    assert layout.lengths.tolist() == [512, 512]


@pytest.mark.parametrize('name', ['PointTransformer', 'SparseConvUnet',
                                  'PVCNN'])
def test_backbones_without_neighbor_lists_refuse_neighborhood_model(name):
    Model, cfg = BACKBONES[name][1], BACKBONES[name][2]
    with pytest.raises(ValueError, match='model.ncm.neighborhood'):
        Model(**cfg, ncm={'neighborhood': 'model'})


@pytest.mark.parametrize('key, value', [('layer', 1), ('target', 'scene')])
def test_kpconv_only_settings_are_refused_with_their_key(key, value):
    with pytest.raises(ValueError, match=f'model.ncm.{key}'):
        NCMRandLANet(**RANDLANET, ncm={key: value})


def test_a_batch_without_the_collated_lists_is_refused(prepared):
    model, inputs, results = prepared('PointTransformer', 'knn')
    batch = ConcatBatcher('cpu', 'PointTransformer').collate_fn(
        [{'data': {'point': inputs['data'].point[:10],
                   'feat': inputs['data'].feat[:10],
                   'label': inputs['data'].label[:10]}, 'attr': {}}])
    with pytest.raises(ValueError, match='ncm_collate'):
        model.ncm_layout(results[:10], batch['data'])


@pytest.mark.parametrize('name, hood', CASES)
def test_the_term_reads_nothing_on_the_host(prepared, name, hood):
    """From each backbone's layout to the NCM term and its backward: no
    host-device synchronisation (test_syncs.HostReads lists what counts)."""
    from test_syncs import HostReads
    model, inputs, results = prepared(name, hood)
    logits = results.detach().requires_grad_(True)
    with HostReads() as reads:
        term = model.ncm_loss.term(*model.ncm_layout(logits, inputs['data']))
        term.backward()
    assert reads.found == []
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize('name', BACKBONES)
def test_worker_payloads_hold_no_tensor_after_a_training_step(prepared, name):
    """What a DataLoader worker receives (the item dataset and the batcher,
    each with the model's data side) holds no tensor, after a step has
    filled the model's logged terms and the NCM's last KL."""
    model, inputs, results = prepared(name, 'knn')
    loss_of(model, results, inputs)
    assert model.loss_terms and isinstance(model.ncm_loss.last_kl,
                                           torch.Tensor)
    dataset = SeededItemDataset(model=model, dataset=[],
                                preprocess=model.preprocess, use_cache=False)
    for payload in (dataset, NCMStockBatcher(model).collate_fn):
        assert_pickles_without_tensors(payload)


@pytest.mark.parametrize('name', ['PointTransformer', 'SparseConvUnet'])
def test_the_ncm_lists_of_a_batch_object_are_pinned_with_it(prepared, name,
                                                           monkeypatch):
    """The stock pin_memory of these batch objects pins their own tensors
    only; a non-blocking copy of the NCM's lists would then be synchronous.
    (torch's CPU build cannot pin: pin_memory is recorded instead.)"""
    model, _, _ = prepared(name, 'knn')
    batcher = NCMStockBatcher(model)
    model.trans_point_sampler = SemSegRandomSampler.get_point_sampler()
    items = []
    for seed in (0, 1):
        attr = {'split': 'training', 'name': f'tiny{seed}', 'idx': seed}
        data = scene(seed, 6000 if name == 'PointTransformer' else 3000)
        items.append({'data': model.transform(model.preprocess(data, attr),
                                              attr), 'attr': attr})
    batch = pickle.loads(pickle.dumps(batcher.collate_fn(items)['data']))
    pinned = []
    monkeypatch.setattr(torch.Tensor, 'pin_memory',
                        lambda self: pinned.append(self) or self)
    neighbors = batch.ncm_neighbors
    batch.pin_memory()
    assert any(t is neighbors for t in pinned)


def test_test_batches_carry_no_ncm_lists(prepared):
    model, _, _ = prepared('RandLANet', 'knn')
    model.trans_point_sampler = SemSegRandomSampler.get_point_sampler()
    attr = {'split': 'test', 'name': 'tiny0', 'idx': 0}
    item = {'data': model.transform(model.preprocess(scene(0, 3000), attr),
                                    attr), 'attr': attr}
    assert 'ncm_neighbors' in NCMStockBatcher(model).collate_fn([item])['data']
    assert 'ncm_neighbors' not in NCMStockBatcher(model, ncm=False).collate_fn(
        [item])['data']


@pytest.mark.parametrize('low, high', [(-300, 300), (-2 ** 40, 2 ** 40)])
def test_unique_rows_is_torch_unique_of_the_rows(low, high):
    """(The second range does not fit one int64 number: the row sort.)"""
    from ncm_plugin.models.sparseconvunet import unique_rows
    generator = torch.Generator().manual_seed(0)
    keys = torch.cat([torch.randint(0, 3, (5000, 1), generator=generator),
                      torch.randint(low, high, (5000, 3),
                                    generator=generator)], 1)
    keys = torch.cat([keys, keys[::7]])  # repeated rows
    expected = torch.unique(keys, dim=0, return_inverse=True,
                            return_counts=True)
    assert all(torch.equal(a, b)
               for a, b in zip(unique_rows(keys), expected))
