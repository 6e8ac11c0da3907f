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
    assert float(ours.loss_terms['ncm']) == pytest.approx(
        0.7 * float(ours.loss_terms['ncm_kl']))


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
        history.append((loss.item(), float(model.loss_terms['ncm_kl'])))
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


def brute_force_pooled(scores, valid, pools):
    """Layer-by-layer loops: each coarse point sums the (sum, count) of the
    real fine points of its pooling list."""
    sums = [s * float(v) for s, v in zip(scores.double(), valid)]
    counts = [float(v) for v in valid]
    for layer_pools in pools:
        fine = len(sums)
        new_sums, new_counts = [], []
        for row in layer_pools.tolist():
            members = [j for j in row if j < fine]
            new_sums.append(sum((sums[j] for j in members),
                                torch.zeros(scores.shape[1],
                                            dtype=torch.float64)))
            new_counts.append(sum(counts[j] for j in members))
        sums, counts = new_sums, new_counts
    pooled = torch.stack([s / c if c > 0 else s for s, c in zip(sums, counts)])
    return pooled, torch.tensor([c > 0 for c in counts])


def test_ncm_on_layer_1_uses_pooled_distributions(inputs):
    _, ours = make_models({'weight': 1.0, 'layer': 1})
    ours.eval()
    batch = inputs['data']
    logits = ours(batch).double()
    valid = torch.ones(len(batch.labels), dtype=torch.bool)
    labels, _ = brute_force_pooled(torch.eye(3)[batch.labels], valid,
                                   batch.pools[:1])
    scores, valid_1 = brute_force_pooled(torch.softmax(logits, 1), valid,
                                         batch.pools[:1])
    assert len(scores) == len(batch.points[1]) < len(batch.points[0])
    target = cooccurrence(labels, batch.neighbors[1], batch.lengths[1],
                          valid_1)
    prediction = cooccurrence(scores, batch.neighbors[1], batch.lengths[1],
                              valid_1)
    expected = ncm_kl(target, prediction, 'forward', 1e-6)
    got = ours.ncm_loss(logits.float(), batch.labels, batch)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-6)
    # Not the layer-0 NCM under another name.
    _, layer_0 = make_models({'weight': 1.0})
    assert abs(layer_0.ncm_loss(logits.float(), batch.labels, batch).item()
               - got.item()) > 1e-4


@pytest.mark.parametrize('layer, message', [
    (2, 'has 2 layer'),    # the tiny architecture has layers 0 and 1
    (-1, '>= 0'),
])
def test_ncm_layer_must_exist_in_the_architecture(layer, message):
    with pytest.raises(ValueError, match=f'model.ncm.layer.*{message}'):
        NCMKPFCNN(**TINY_MODEL, ncm={'layer': layer})


def test_ncm_term_stays_float32_and_finite_with_half_inputs(inputs):
    """pipeline.amp: under float16 autocast the NCM term is still float32."""
    _, ours = make_models({'weight': 1.0})
    batch = inputs['data']
    with torch.no_grad():
        logits = ours(batch)
    reference = ours.ncm_loss(logits, batch.labels, batch)
    # Confident half-precision logits: float16 softmax products of this
    # size underflow, the float32 term must not.
    half = (logits * 20).half().requires_grad_(True)
    with torch.autocast('cpu', dtype=torch.float16):
        term = ours.ncm_loss(half, batch.labels, batch)
    assert term.dtype == torch.float32 and torch.isfinite(term)
    term.backward()
    assert half.grad.dtype == torch.float16
    assert torch.isfinite(half.grad).all()
    torch.testing.assert_close(
        ours.ncm_loss(half.detach().float(), batch.labels, batch), term)
    assert reference.dtype == torch.float32
