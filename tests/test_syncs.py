"""The NCM term and the plugin's own part of the loss never make the host
wait for the device: no op that reads a device value on the host (`.item()`,
`float()`, `bool()`, `.tolist()` all end in aten::_local_scalar_dense), no op
whose output size depends on the data (boolean-mask indexing, nonzero,
bincount, repeat_interleave without output_size), and no host-to-device copy
(a blocking copy on a GPU): no tensor made from Python data
(`torch.tensor`/`as_tensor` of a list or a number end in aten::lift_fresh;
`torch.full` is a fill, not a copy), no CPU tensor moved to another device.
Checked on the CPU by recording every aten op torch dispatches, forward and
backward."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import TINY_MODEL, kpconv_batch, tiny_scene
from ncm_plugin.losses import class_indices
from ncm_plugin.models import NCMKPFCNN
from ncm_plugin.training.totals import EpochTotals

SYNCING = {'aten::_local_scalar_dense', 'aten::nonzero', 'aten::masked_select',
           'aten::bincount', 'aten::unique', 'aten::_unique2',
           'aten::unique_consecutive', 'aten::item'}


class HostReads(TorchDispatchMode):
    """Records the ops that would make the host wait for a device."""

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name in SYNCING:
            self.found.append(name)
        elif name == 'aten::index' and any(
                index is not None and index.dtype == torch.bool
                for index in args[1]):
            self.found.append('aten::index with a boolean mask')
        elif name == 'aten::repeat_interleave' and \
                kwargs.get('output_size', args[-1] if len(args) > 2 else None) is None:
            self.found.append('aten::repeat_interleave without output_size')
        elif name in FROM_PYTHON:
            self.found.append(f'{name}: a tensor from Python data')
        elif name in COPIES and moves_to_a_device(name, args, kwargs):
            self.found.append(f'{name} from the CPU to a device')
        return func(*args, **kwargs)


# A tensor made from Python data: torch.tensor / as_tensor build it on the
# CPU and copy it to the device out of the recorder's sight, then lift it.
FROM_PYTHON = {'aten::lift_fresh', 'aten::lift_fresh_copy'}
COPIES = {'aten::_to_copy', 'aten::copy_'}


def moves_to_a_device(name, args, kwargs):
    """Whether a copy op brings a CPU tensor to another device."""
    if name == 'aten::copy_':
        source, target = args[1].device, args[0].device
    else:
        source = args[0].device
        target = kwargs.get('device') or source
    return source.type == 'cpu' and torch.device(target).type != 'cpu'


def test_the_recorder_sees_a_host_read():
    values = torch.arange(4.0)
    with HostReads() as reads:
        values[values > 1].sum().item()
    assert 'aten::_local_scalar_dense' in reads.found
    assert 'aten::index with a boolean mask' in reads.found


def test_the_recorder_sees_a_host_to_device_copy():
    labels = torch.arange(4)
    with HostReads() as reads:
        # As class_indices built its ignored labels, and get_loss a Python
        # number term, before.
        torch.as_tensor([0, 2], dtype=labels.dtype, device=labels.device)
        torch.as_tensor(0.0, device=labels.device)
        torch.zeros(2).to('meta')
    assert reads.found == ['aten::lift_fresh: a tensor from Python data'] * 2 \
        + ['aten::_to_copy from the CPU to a device']


def test_the_recorder_sees_the_former_class_indices():
    def class_indices_before(labels, ignored_label_inds):
        ignored = torch.as_tensor(list(ignored_label_inds), dtype=labels.dtype,
                                  device=labels.device)
        return ~torch.isin(labels, ignored)

    labels = torch.arange(4)
    with HostReads() as reads:
        class_indices_before(labels, [0])
    assert reads.found == ['aten::lift_fresh: a tensor from Python data']
    with HostReads() as reads:
        class_indices(labels, 3, [0, -1])
    assert reads.found == []


@pytest.mark.parametrize('ncm', [
    {'weight': 1.0},
    {'weight': 1.0, 'direction': 'reverse'},
    {'weight': 1.0, 'layer': 1},
    {'weight': 1.0, 'target': 'scene'},
])
def test_the_ncm_term_reads_nothing_on_the_host(ncm):
    model = NCMKPFCNN(**{**TINY_MODEL, 'ignored_label_inds': [0], 'ncm': ncm})
    inputs = kpconv_batch(model, [tiny_scene(0), tiny_scene(1)])
    batch = inputs['data']
    if ncm.get('target') == 'scene':
        from ncm_plugin.training.batcher import NCMConcatBatcher
        batch.ncm_target = torch.full((2, 3, 3), 1 / 9)
        assert NCMConcatBatcher  # the batcher that carries it in training
    logits = torch.randn(batch.labels.shape[0], 3, requires_grad=True)
    with HostReads() as reads:
        term = model.ncm_loss(logits, batch.labels, batch)
        term.backward()
    assert reads.found == []
    assert torch.isfinite(term) and logits.grad.abs().sum() > 0


def test_the_loss_terms_stay_on_the_device(monkeypatch):
    """NCMKPFCNN.get_loss adds nothing that reads the device (the stock
    KPFCNN part, replaced here by a sync-free stand-in, is Open3D-ML's)."""
    from open3d._ml3d.torch.models.kpconv import KPFCNN
    model = NCMKPFCNN(**{**TINY_MODEL, 'ncm': {'weight': 0.5}})
    inputs = kpconv_batch(model, [tiny_scene(0)])
    logits = torch.randn(inputs['data'].labels.shape[0], 3, requires_grad=True)

    def stock_get_loss(self, loss_fn, results, inputs, device):
        self.output_loss = results.logsumexp(1).mean()
        self.reg_loss = 0  # rigid KPFCNN's regularizer: a Python number
        return self.output_loss, inputs['data'].labels, results

    monkeypatch.setattr(KPFCNN, 'get_loss', stock_get_loss)
    totals = EpochTotals(3, torch.device('cpu'), 'training', 0)
    with HostReads() as reads:
        loss, labels, scores = model.get_loss(None, logits, inputs, 'cpu')
        totals.add(0, {'loss': loss, **model.loss_terms})
        totals.add_predictions(scores.detach(), labels.long())
    assert reads.found == []
    assert all(isinstance(v, torch.Tensor) for v in model.loss_terms.values())
    assert float(model.loss_terms['ncm']) == pytest.approx(
        0.5 * float(model.loss_terms['ncm_kl']))
