"""KPFCNN batches: collated on the CPU whatever the device, moved whole (scene
targets included) without blocking, upsampled from the nearest point."""
import numpy as np
import pytest
import torch

from conftest import TINY_MODEL, tiny_scene, whole_cloud_sampler
from ncm_plugin.models import NCMKPFCNN
from ncm_plugin.training.batcher import (DeviceBatcher, HostKPConvBatch,
                                         NCMConcatBatcher, nearest_first)


def items(model, count=2):
    model.trans_point_sampler = whole_cloud_sampler
    out = []
    for seed in range(count):
        attr = {'split': 'training', 'name': f'tiny{seed}', 'idx': seed}
        data = model.transform(model.preprocess(tiny_scene(seed), attr), attr)
        out.append({'data': data, 'attr': attr})
    return out


def tensors(batch):
    found = [t for name in ('points', 'neighbors', 'pools', 'upsamples',
                            'lengths') for t in getattr(batch, name)]
    return found + [getattr(batch, name) for name in (
        'features', 'labels', 'scales', 'rots', 'frame_inds', 'frame_centers',
        'ncm_target')]


def test_batches_are_collated_on_the_cpu_for_any_device():
    """A pinning DataLoader gets CPU tensors (CUDA tensors cannot be pinned)."""
    model = NCMKPFCNN(**{**TINY_MODEL, 'ncm': {'weight': 1.0,
                                               'target': 'scene'}})
    batch = NCMConcatBatcher().collate_fn(items(model))['data']
    assert isinstance(batch, HostKPConvBatch)
    assert {t.device.type for t in tensors(batch)} == {'cpu'}


def test_the_batch_moves_every_tensor_with_the_scene_target():
    model = NCMKPFCNN(**{**TINY_MODEL, 'ncm': {'weight': 1.0,
                                               'target': 'scene'}})
    batch = NCMConcatBatcher().collate_fn(items(model))['data']
    assert batch.ncm_target.shape == (2, 3, 3)
    moved = batch.to(torch.device('meta'), non_blocking=True)
    assert {t.device.type for t in tensors(moved)} == {'meta'}


def test_upsampling_takes_the_nearest_point():
    model = NCMKPFCNN(**{**TINY_MODEL, 'ncm': {'weight': 1.0}})
    batch = NCMConcatBatcher().collate_fn(items(model))['data']
    fine, coarse = batch.points[0].numpy(), batch.points[1].numpy()
    first = batch.upsamples[0][:, 0].numpy()
    # Brute force: the nearest coarse point of every fine point, within the
    # same cloud of the batch.
    fine_cloud = np.repeat(np.arange(2), batch.lengths[0].numpy())
    coarse_cloud = np.repeat(np.arange(2), batch.lengths[1].numpy())
    distance2 = ((fine[:, None] - coarse[None]) ** 2).sum(-1)
    distance2[fine_cloud[:, None] != coarse_cloud[None]] = np.inf
    nearest = distance2.min(axis=1)
    has_neighbor = first < len(coarse)
    assert has_neighbor.mean() > 0.99
    np.testing.assert_allclose(
        distance2[np.arange(len(fine)), first][has_neighbor],
        nearest[has_neighbor], rtol=1e-5)


def test_nearest_first_swaps_the_nearest_into_column_0_in_place():
    upsamples = torch.tensor([[4, 3, 1, 2],
                              [1, 4, 0, 2],
                              [4, 4, 4, 4]])   # 4 = shadow only
    # Nearest 2 (column 3), 1 (already first), none (the shadow, column 0).
    ordered = nearest_first(upsamples, torch.tensor([2, 1, 4]),
                            torch.tensor([3, 0, 0]))
    assert ordered is upsamples
    assert ordered.tolist() == [[2, 3, 1, 4], [1, 4, 0, 2], [4, 4, 4, 4]]


def test_nearest_first_finds_the_column_in_sorted_rows():
    upsamples = torch.tensor([[0, 2, 5, 6, 9],
                              [3, 9, 9, 9, 9],
                              [9, 9, 9, 9, 9]])  # 9 = shadow
    ordered = nearest_first(upsamples, torch.tensor([5, 3, 9]))
    assert ordered.tolist() == [[5, 2, 0, 6, 9], [3, 9, 9, 9, 9],
                                [9, 9, 9, 9, 9]]


@pytest.mark.parametrize('sort_neighbors', [False, True])
def test_every_upsampling_row_starts_with_its_nearest_point(sort_neighbors):
    model = NCMKPFCNN(**{**TINY_MODEL, 'ncm': {'weight': 1.0}})
    batch = NCMConcatBatcher(sort_neighbors=sort_neighbors).collate_fn(
        items(model))['data']
    for layer, upsamples in enumerate(batch.upsamples):
        if not upsamples.shape[0]:
            continue
        fine = batch.points[layer].numpy()
        coarse = batch.points[layer + 1].numpy()
        for query, row in zip(fine[::7], upsamples.numpy()[::7]):
            real = sorted(int(i) for i in row if i < len(coarse))
            if not real:
                assert (row == len(coarse)).all()
                continue
            distance2 = [float(((coarse[i][0] - query[0]) ** 2
                                + (coarse[i][1] - query[1]) ** 2)
                               + (coarse[i][2] - query[2]) ** 2)
                         for i in real]
            assert row[0] == real[distance2.index(min(distance2))]


def test_the_ncm_knn_lists_come_with_the_batch():
    model = NCMKPFCNN(**{**TINY_MODEL, 'ncm': {'weight': 1.0, 'k': 4,
                                               'neighborhood': 'knn'}})
    batch = NCMConcatBatcher(ncm_knn=(0, 4)).collate_fn(items(model))['data']
    points = batch.points[0].numpy().astype(np.float64)
    cloud = np.repeat(np.arange(2), batch.lengths[0].numpy())
    distance2 = ((points[:, None] - points[None]) ** 2).sum(-1)
    distance2[cloud[:, None] != cloud[None]] = np.inf
    np.fill_diagonal(distance2, np.inf)
    expected = np.sort(np.argsort(distance2, axis=1, kind='stable')[:, :4], 1)
    assert np.array_equal(np.sort(batch.ncm_neighbors.numpy(), 1), expected)
    logits = torch.randn(len(points), 3)
    with_lists = model.ncm_loss(logits, batch.labels, batch)
    del batch.ncm_neighbors
    assert torch.equal(model.ncm_loss(logits, batch.labels, batch), with_lists)


def test_the_stock_summary_reads_host_lengths_of_a_moved_batch(monkeypatch):
    """Open3D-ML's KPFCNN summary calls .numpy() on lengths[0], which fails
    once the batch is on the GPU ('meta' stands in for it here)."""
    from open3d._ml3d.torch.pipelines import SemanticSegmentation

    from ncm_plugin.training.pipeline import NCMSemanticSegmentation
    model = NCMKPFCNN(**TINY_MODEL)
    batch = NCMConcatBatcher().collate_fn(items(model))['data']
    collated = [t.clone() for t in batch.lengths]
    batch.to('meta')
    with pytest.raises((TypeError, NotImplementedError, RuntimeError)):
        batch.lengths[0].detach().numpy()  # the stand-in fails as CUDA does
    seen = {}
    monkeypatch.setattr(
        SemanticSegmentation, 'get_3d_summary',
        lambda self, results, data, epoch, save_gt=True: seen.update(
            lengths=data.lengths[0].detach().numpy()))
    pipeline = object.__new__(NCMSemanticSegmentation)
    pipeline.model = model
    pipeline.get_3d_summary(None, batch, 0)
    assert np.array_equal(seen['lengths'], collated[0].numpy())
    assert batch.lengths[0].device.type == 'meta'


def test_the_inference_batcher_moves_the_batch_to_the_device():
    """Open3D-ML's run_inference never moves a batch: the batcher the
    pipeline gives it does."""
    model = NCMKPFCNN(**TINY_MODEL)
    batcher = DeviceBatcher(NCMConcatBatcher(), 'meta')
    assert batcher.model == 'KPFCNN'  # what the stock loops read
    batch = batcher.collate_fn(items(model))['data']
    batch.ncm_target = None
    assert {t.device.type for t in tensors(batch) if t is not None} == {'meta'}
