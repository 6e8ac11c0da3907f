"""Items of the backbones that choose their own points (RandLA-Net,
PointTransformer, SparseConvUnet, PVCNN with the stock SemSegRandomSampler),
requested in the main process and seeded one by one, so that DataLoader
workers load exactly what the main process would.

The stock random sampler draws its cloud order and each item's centre from
the global generators of whichever process loads the item, and inside a
DataLoader worker Open3D-ML's RandLA-Net `transform` and PVCNN's and
SparseConvUnet's `preprocess` build their generator from the worker's seed
on every call: every item a persistent worker loads would get the same
draws. Here the main process sends (cloud, seed) requests, in the stock
order (a permutation of the epoch's steps, modulo the clouds); the worker
seeds the global generators and the model's own generator with the
request's seed, and hides its worker identity from the model's code so that
the model draws from that generator.
"""
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch
from open3d._ml3d.datasets.samplers import SemSegRandomSampler
from open3d._ml3d.torch.dataloaders import TorchDataloader

from .clouds import KeptClouds
from .samplers import data_model, preprocessed_by, seeded, sphere_seed


class ItemRequest(NamedTuple):
    """One item: the cloud (index in the split) and the seed of its draws."""
    cloud: int
    seed: int


class ItemRequests(torch.utils.data.Sampler):
    """The DataLoader's sampler: `length` ItemRequests an epoch, in the
    stock random sampler's order, seeded by (run seed, epoch, number);
    `skip(n)` drops the epoch's first n (a resumed epoch).

    Under torchrun the ranks draw one order of length * world_size items
    from `order_seed` (the same on every rank) and rank r takes items
    r, r + W, r + 2W, ...: together the ranks cover the epoch once."""

    def __init__(self, num_clouds, length, seed, order_seed=None, ranks=None):
        self.num_clouds, self.length, self.seed = int(num_clouds), int(length), seed
        self.order_seed = seed if order_seed is None else order_seed
        self.rank = ranks.rank if ranks is not None else 0
        self.world_size = ranks.world_size if ranks is not None else 1
        self.epoch, self._skip = 0, 0

    def __len__(self):
        return self.length

    def start_epoch(self, epoch):
        self.epoch = int(epoch)

    def skip(self, count):
        self._skip = int(count)

    def __iter__(self):
        skip, self._skip = self._skip, 0
        order = np.random.default_rng([self.order_seed, self.epoch]).permutation(
            self.length * self.world_size)[self.rank::self.world_size] % \
            self.num_clouds
        for number in range(skip, self.length):
            yield ItemRequest(int(order[number]),
                              sphere_seed(self.seed, self.epoch, number))


@contextmanager
def as_main_process():
    """torch.utils.data.get_worker_info() returns None inside the block:
    Open3D-ML's models then draw from their own `rng` (seeded per item)
    rather than from a generator rebuilt from the worker's seed."""
    from torch.utils.data._utils import worker
    saved = worker._worker_info
    worker._worker_info = None
    try:
        yield
    finally:
        worker._worker_info = saved


class SeededItemDataset(TorchDataloader):
    """TorchDataloader whose index is an ItemRequest: the item of the
    requested cloud, every random draw seeded by the request. A worker gets
    a parameter-free copy of the model once, when it starts."""

    def __init__(self, *args, model=None, **kwargs):
        self.model = model
        super().__init__(*args, transform=model.transform, **kwargs)
        # The preprocessed clouds, for models whose preprocess draws nothing
        # (`deterministic_preprocess`): made once per process, not per item.
        self.kept = KeptClouds() if getattr(
            model, 'deterministic_preprocess', False) else None

    def __getstate__(self):
        state = dict(self.__dict__)
        bare = data_model(self.model)
        bare.trans_point_sampler = None  # a closure; set again per item
        state['model'], state['transform'] = bare, bare.transform
        return preprocessed_by(state, bare)

    def __getitem__(self, request):
        if not isinstance(request, ItemRequest):
            raise TypeError(f"SeededItemDataset takes ItemRequests, got "
                            f"{type(request).__name__}")
        self.model.trans_point_sampler = SemSegRandomSampler.get_point_sampler()
        self.model.rng = np.random.default_rng(request.seed)
        with seeded(request.seed), as_main_process():
            if self.kept is None:
                item = super().__getitem__(request.cloud)
            else:
                item = self._item_of_kept_cloud(request.cloud)
        # The batcher seeds its draws from its items' seeds (batch_seed).
        item['attr'] = {**item['attr'], 'sphere_seed': request.seed}
        return item

    def _item_of_kept_cloud(self, index):
        """TorchDataloader's item, the preprocessed cloud from `kept`."""
        dataset = self.dataset
        index = index % len(dataset)
        attr = dataset.get_attr(index)

        def preprocessed():
            if self.cache_convert:
                return self.cache_convert(attr['name'])
            if self.preprocess is None:
                return dataset.get_data(index)
            return self.preprocess(dataset.get_data(index), attr)

        data = self.kept.get(index, preprocessed)
        return {'data': self.transform(data, attr), 'attr': attr}
