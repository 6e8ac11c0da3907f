"""NCMKPFCNN: stock KPFCNN loss + weight * NCM, registered in Open3D-ML."""
import numpy as np
import pytest
import torch
from open3d._ml3d.torch.models import KPFCNN
from open3d._ml3d.torch.modules.losses import SemSegLoss
from open3d._ml3d.utils import Config, get_module

from conftest import TINY_MODEL, kpconv_batch, tiny_scene
from ncm_plugin.models import NCMKPFCNN
from ncm_plugin.ncm import cooccurrence, ncm_kl


class FakeDataset:
    """What SemSegLoss reads from a dataset: its class weights."""
    cfg = Config({'class_weights': [100, 300, 50]})


def make_models(ncm):
    np.random.seed(0)
    torch.manual_seed(0)
    stock = KPFCNN(**TINY_MODEL)
    ours = NCMKPFCNN(**TINY_MODEL, ncm=ncm)
    ours.load_state_dict(stock.state_dict())
    return stock, ours


def losses(model, inputs):
    loss_fn = SemSegLoss(None, model, FakeDataset, 'cpu')
    results = model(inputs['data'])
    return model.get_loss(loss_fn, results, inputs, 'cpu')[0], results


@pytest.fixture(scope='module')
def inputs():
    np.random.seed(1)
    return kpconv_batch(NCMKPFCNN(**TINY_MODEL),
                        [tiny_scene(0), tiny_scene(1, 2400)])


def test_model_is_registered():
    assert get_module('model', 'NCMKPFCNN', 'torch') is NCMKPFCNN
    assert issubclass(NCMKPFCNN, KPFCNN)


@pytest.mark.parametrize('direction', ['forward', 'reverse'])
def test_loss_is_stock_plus_weighted_ncm(inputs, direction):
    stock, ours = make_models({'weight': 0.7, 'direction': direction})
    stock_loss, _ = losses(stock, inputs)
    our_loss, results = losses(ours, inputs)

    batch = inputs['data']
    target = cooccurrence(torch.eye(3)[batch.labels], batch.neighbors[0],
                          batch.lengths[0])
    prediction = cooccurrence(torch.softmax(results, 1), batch.neighbors[0],
                              batch.lengths[0])
    expected = stock_loss + 0.7 * ncm_kl(target, prediction, direction)
    torch.testing.assert_close(our_loss, expected)
    assert our_loss.item() > stock_loss.item()
    assert ours.loss_terms['ncm'] == pytest.approx(
        0.7 * ours.loss_terms['ncm_kl'])


def test_weight_zero_is_stock_kpfcnn(inputs):
    stock, ours = make_models({'weight': 0.0})
    stock_loss, _ = losses(stock, inputs)
    our_loss, _ = losses(ours, inputs)
    assert torch.equal(our_loss, stock_loss)
    assert set(ours.loss_terms) == {'cross_entropy', 'regularizer'}


def test_batch_has_two_clouds_and_real_neighbors(inputs):
    batch = inputs['data']
    assert batch.lengths[0].tolist()[0] > 100 and len(batch.lengths[0]) == 2
    assert (batch.neighbors[0] < batch.points[0].shape[0]).sum(1).float(
    ).mean() > 4


def test_training_steps_lower_the_loss_and_the_ncm_term(inputs):
    _, model = make_models({'weight': 1.0})
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = SemSegLoss(None, model, FakeDataset, 'cpu')
    history = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = model.get_loss(loss_fn, model(inputs['data']), inputs, 'cpu')[0]
        loss.backward()
        optimizer.step()
        history.append((loss.item(), model.loss_terms['ncm_kl']))
    assert history[-1][0] < 0.7 * history[0][0]
    assert history[-1][1] < 0.7 * history[0][1]


@pytest.mark.parametrize('ncm, message', [
    ({'weight': -1.0}, 'weight'),
    ({'direction': 'sideways'}, 'direction'),
    ({'wieght': 1.0}, 'wieght'),
    ({'neighborhood': 'ball'}, 'neighborhood'),
    ({'eps': 'small'}, 'eps'),
])
def test_bad_ncm_settings_name_the_key(ncm, message):
    with pytest.raises((KeyError, ValueError, TypeError), match=message):
        NCMKPFCNN(**TINY_MODEL, ncm=ncm)


def test_knn_neighborhood_stays_inside_each_cloud(inputs):
    stock, ours = make_models({'weight': 1.0, 'neighborhood': 'knn', 'k': 8})
    neighbors = ours.ncm_loss.neighbors(inputs['data'])
    lengths = inputs['data'].lengths[0].tolist()
    num_points = sum(lengths)
    assert neighbors.shape == (num_points, 8)
    cloud = np.repeat(np.arange(len(lengths)), lengths)
    real = neighbors.numpy() < num_points
    assert real.all()
    rows = np.broadcast_to(np.arange(num_points)[:, None], neighbors.shape)
    assert (cloud[neighbors.numpy()] == cloud[rows]).all()
    assert (neighbors.numpy() != rows).all()
    stock_loss, _ = losses(stock, inputs)
    our_loss, _ = losses(ours, inputs)
    assert torch.isfinite(our_loss) and our_loss > stock_loss
