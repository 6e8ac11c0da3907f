"""Backbones whose preprocess draws nothing (RandLA-Net, PointTransformer)
preprocess a training cloud once per process, not once per item, and get
the same items; the others (their preprocess draws) preprocess every item."""
import numpy as np
import pytest
import torch

from ncm_plugin.training.clouds import KeptClouds
from ncm_plugin.training.items import ItemRequest, SeededItemDataset
from test_backbones import BACKBONES, scene


class Split:
    """What TorchDataloader reads of a dataset split."""

    def __init__(self, clouds):
        self.clouds = clouds

    def __len__(self):
        return len(self.clouds)

    def get_attr(self, index):
        return {'split': 'training', 'name': f'tiny{index}', 'idx': index}

    def get_data(self, index):
        return {key: value.copy() for key, value in self.clouds[index].items()}


def flat(value):
    """Every array of an item, in order."""
    if isinstance(value, dict):
        return [a for key in sorted(value) for a in flat(value[key])]
    if isinstance(value, (list, tuple)):
        return [a for v in value for a in flat(v)]
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return [np.asarray(value)]
    return []


def items(name, requests, keep):
    """(items, preprocess calls) of `requests` through SeededItemDataset."""
    _, Model, cfg, _, _ = BACKBONES[name]
    if name == 'PointTransformer':
        cfg = {**cfg, 'max_voxels': 2000}  # a crop, drawn from the seed
    torch.manual_seed(0)
    model = Model(**cfg, ncm={'weight': 1.0, 'neighborhood': 'knn'})
    points = 6000 if name == 'PointTransformer' else 3000
    dataset = SeededItemDataset(
        model=model, dataset=Split([scene(s, points) for s in (0, 1)]),
        preprocess=model.preprocess, use_cache=False)
    assert (dataset.kept is not None) == model.deterministic_preprocess
    if not keep:
        dataset.kept = None
    calls = []
    preprocess = dataset.preprocess
    dataset.preprocess = lambda *args: calls.append(1) or preprocess(*args)
    return [dataset[r] for r in requests], len(calls)


@pytest.mark.parametrize('name', ['RandLANet', 'PointTransformer'])
def test_a_kept_cloud_gives_the_items_of_a_preprocess_per_item(name):
    requests = [ItemRequest(0, 11), ItemRequest(1, 12), ItemRequest(0, 13),
                ItemRequest(0, 11)]
    kept, kept_calls = items(name, requests, keep=True)
    every, every_calls = items(name, requests, keep=False)
    assert (kept_calls, every_calls) == (2, 4)
    for a, b in zip(kept, every):
        arrays_a, arrays_b = flat(a['data']), flat(b['data'])
        assert len(arrays_a) == len(arrays_b) > 2
        assert all(np.array_equal(x, y) for x, y in zip(arrays_a, arrays_b))
    # (The seeds matter: the same cloud with another seed is another item.)
    assert not all(np.array_equal(x, y) for x, y in zip(
        flat(kept[0]['data']), flat(kept[2]['data'])))


@pytest.mark.parametrize('name', ['SparseConvUnet', 'PVCNN'])
def test_a_preprocess_that_draws_runs_for_every_item(name):
    _, calls = items(name, [ItemRequest(0, 1), ItemRequest(0, 2)], keep=True)
    assert calls == 2


def test_kept_clouds_stay_within_their_bytes_and_are_copied():
    made = []

    def cloud(key, size):
        def make():
            made.append(key)
            return {'point': np.full(size, key, dtype=np.uint8), 'name': key}
        return make

    kept = KeptClouds(limit=100)
    first = kept.get(0, cloud(0, 60))
    first['point'][:] = 9  # a transform writing into its copy
    assert kept.get(0, cloud(0, 60))['point'].tolist() == [0] * 60
    kept.get(1, cloud(1, 30))
    kept.get(0, cloud(0, 60))            # 0 used last: 1 is the oldest
    kept.get(2, cloud(2, 30))            # 120 bytes: 1 goes
    kept.get(3, cloud(3, 101))           # larger than the limit: not kept
    assert (sorted(kept.clouds), kept.bytes) == ([0, 2], 90)
    kept.get(1, cloud(1, 30))
    assert made == [0, 1, 2, 3, 1]
