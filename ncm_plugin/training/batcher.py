"""The batchers: batches are collated on the CPU (in a worker, or in the
main process with no worker), pinned by the DataLoader on CUDA, copied to the
device by the training loop (`move_batch`).

KPFCNN: `NCMConcatBatcher`, which also carries the scene-level NCM targets
(`model.ncm.target: scene`, see scene_target.py). Every other backbone:
`NCMStockBatcher`, the stock batcher its config names, then the model's
`ncm_collate` (its NCM neighborhood, found on the CPU here rather than in
the training step).
"""
import contextlib
import copy
import functools

import numpy as np
import torch
from open3d._ml3d.torch.dataloaders import ConcatBatcher, DefaultBatcher
from open3d._ml3d.torch.dataloaders.concat_batcher import (
    KPConvBatch, PointTransformerBatch, SparseConvUnetBatch)

from ..losses import knn_neighbors
from .samplers import batch_seed, data_model, seeded
from .radius_search import sized_hash_tables

# Tensor-valued attributes of a KPConvBatch: lists of tensors, then tensors.
LIST_FIELDS = ('points', 'neighbors', 'pools', 'upsamples', 'lengths')
TENSOR_FIELDS = ('features', 'labels', 'scales', 'rots', 'frame_inds',
                 'frame_centers', 'ncm_target', 'ncm_neighbors')


class HostKPConvBatch(KPConvBatch):
    """KPConvBatch that the DataLoader can pin (`pin_memory`) and that moves
    every tensor it holds, the scene targets included, with `non_blocking`.
    (The stock `to` blocks, and forgets `ncm_target`.)"""

    def _apply(self, function):
        # The lengths as collated, kept on the host for code that reads
        # them there (the stock 3D summary) after the batch moved.
        if not hasattr(self, 'host_lengths'):
            self.host_lengths = list(self.lengths)
        for name in LIST_FIELDS:
            setattr(self, name, [function(t) for t in getattr(self, name)])
        for name in TENSOR_FIELDS:
            value = getattr(self, name, None)
            if value is not None:
                setattr(self, name, function(value))
        return self

    def pin_memory(self):
        return self._apply(lambda tensor: tensor.pin_memory())

    def to(self, device, non_blocking=False):
        return self._apply(
            lambda tensor: tensor.to(device, non_blocking=non_blocking))


def host_view(batch):
    """A shallow copy of a moved KPConv batch whose `lengths` are the host
    copies (HostKPConvBatch.host_lengths); other batches as they are."""
    host_lengths = getattr(batch, 'host_lengths', None)
    if host_lengths is None:
        return batch
    view = copy.copy(batch)
    view.lengths = host_lengths
    return view


def sort_rows(neighbors):
    """[N, K] neighbor lists with each row in ascending order (the shadow
    index, the largest, last)."""
    return torch.sort(neighbors, dim=1).values


def nearest_first(upsamples, nearest, column=None):
    """upsamples [N, K] (indices into the coarser layer's points, shadow M)
    with each row's nearest point `nearest` [N] swapped into column 0, in
    place; `column` [N]: where it is in its row (None: the rows are sorted,
    `sort_rows`, and it is found by a binary search).

    KPConv's nearest upsampling takes the first neighbor as the nearest (its
    `closest_pool` says so and reads column 0 only); Open3D's radius search
    returns them in hash-grid order, so the stock batcher upsamples from an
    arbitrary point within the radius, differently from run to run. The
    nearest of each row comes from its search (radius_search.Searches)."""
    if column is None:
        column = torch.searchsorted(upsamples, nearest[:, None])[:, 0]
    head = upsamples[:, 0].clone()
    upsamples[torch.arange(len(upsamples)), column] = head
    upsamples[:, 0] = nearest
    return upsamples


class NCMConcatBatcher(ConcatBatcher):
    """Open3D-ML's ConcatBatcher for KPFCNN, always on the CPU, whose batches
    are HostKPConvBatch and carry `ncm_target [B, C, C]` when the items have
    scene targets.

    Its radius searches use hash tables sized for the points
    (radius_search.py). Upsampling lists always have the nearest point first
    (`nearest_first`).
    sort_neighbors: Open3D's multi-threaded radius search returns each
    point's neighbors in an order that varies from run to run; KPConv's sums
    over them then differ in the last bits. Sorted, two runs give the same
    weights (pipeline.deterministic), for the price of one sort a layer in
    the batcher.
    ncm_knn: (layer, k) of `model.ncm.neighborhood: knn`: the NCM's kNN lists
    are built here (`batch.ncm_neighbors`), on the CPU like KPConv's own
    (Open3D's kNN has no CUDA kernel), in a worker rather than in the step.
    """

    def __init__(self, sort_neighbors=False, ncm_knn=None):
        super().__init__(torch.device('cpu'), 'KPFCNN')
        self.sort_neighbors = sort_neighbors
        self.ncm_knn = ncm_knn

    def collate_fn(self, batches):
        seed = batch_seed(batches)
        with seeded(seed) if seed is not None else \
                contextlib.nullcontext(), sized_hash_tables() as searches:
            out = super().collate_fn(batches)
        # The items' attributes (the stock batcher drops them): the sphere
        # check reads which cloud each sphere is of.
        out['attr'] = [item['attr'] for item in batches]
        batch = out['data']
        batch.__class__ = HostKPConvBatch
        if self.sort_neighbors:
            batch.neighbors = [sort_rows(n) for n in batch.neighbors]
            batch.pools = [sort_rows(n) for n in batch.pools]
            batch.upsamples = [sort_rows(n) for n in batch.upsamples]
        for layer, upsamples in enumerate(batch.upsamples):
            if upsamples.shape[0]:
                nearest, column = searches.nearest_of(
                    batch.points[layer], batch.points[layer + 1],
                    upsamples.shape[1])
                nearest_first(upsamples, nearest,
                              None if self.sort_neighbors else column)
        if self.ncm_knn is not None:
            layer, k = self.ncm_knn
            batch.ncm_neighbors = knn_neighbors(batch.points[layer],
                                                batch.lengths[layer], k)
        targets = [t for item in batches
                   for t in item['data'].get('ncm_target_list', ())]
        if targets:
            spheres = sum(len(item['data']['p_list']) for item in batches)
            if len(targets) != spheres:
                raise ValueError(f"{len(targets)} scene targets for {spheres} "
                                 f"spheres: every item needs ncm_target_list")
            # KPConvBatch keeps the first spheres up to batch_limit.
            kept = len(out['data'].lengths[0])
            out['data'].ncm_target = torch.from_numpy(np.stack(targets[:kept]))
        return out


# What a backbone's ncm_collate adds to a batch object or dict: names that
# start with this travel with the batch (pinned, moved to the device).
NCM_PREFIX = 'ncm_'


class NCMStockBatcher:
    """The stock batcher of `model.batcher` (DefaultBatcher or
    ConcatBatcher, which dispatches on the stock model's name), on the CPU,
    followed by `model.ncm_collate` (ncm: False leaves it out, for test
    batches, which never read the NCM's lists). The NCM's additions to a
    batch object are pinned with it (`PinningBatch`)."""

    def __init__(self, model, ncm=True):
        name = model.cfg.get('batcher', 'DefaultBatcher')
        if name == 'DefaultBatcher':
            self.stock = DefaultBatcher()
        elif name == 'ConcatBatcher':
            self.stock = ConcatBatcher(torch.device('cpu'), model.stock_name)
        else:
            raise ValueError(f"model.batcher must be DefaultBatcher or "
                             f"ConcatBatcher, got {name!r}")
        self.ncm_collate = model.ncm_collate if ncm else None

    def __getstate__(self):
        # A worker gets the parameter-free copy of the model, not its weights.
        state = dict(self.__dict__)
        if self.ncm_collate is not None:
            state['ncm_collate'] = data_model(
                self.ncm_collate.__self__).ncm_collate
        return state

    def collate_fn(self, batches):
        seed = batch_seed(batches)
        with seeded(seed) if seed is not None else contextlib.nullcontext():
            out = self.stock.collate_fn(batches)
        if self.ncm_collate is not None:
            out['data'] = pinning(self.ncm_collate(out['data']))
        return out


def pinning(batch):
    """A stock batch object (PointTransformer's, SparseConvUnet's) as its
    `PinningBatch` subclass, whose `pin_memory` also pins what ncm_collate
    added (`ncm_*`): the stock one pins only its own tensors, and a copy
    from pageable memory with non_blocking is a synchronous one. Dicts are
    pinned whole by torch."""
    subclass = PINNING_BATCHES.get(type(batch))
    if subclass is not None:
        batch.__class__ = subclass
    return batch


class PinningBatch:
    """Mixin: the stock pin_memory, then the ncm_* tensors."""

    def pin_memory(self):
        pinned = super().pin_memory()
        pinned = self if pinned is None else pinned
        for key, value in vars(pinned).items():
            if key.startswith(NCM_PREFIX):
                setattr(pinned, key, _moved(value, torch.Tensor.pin_memory))
        return pinned


# Module-level classes: a batch collated in a worker is unpickled (and
# pinned) in the main process by its class's name.
class NCMPointTransformerBatch(PinningBatch, PointTransformerBatch):
    pass


class NCMSparseConvUnetBatch(PinningBatch, SparseConvUnetBatch):
    pass


PINNING_BATCHES = {PointTransformerBatch: NCMPointTransformerBatch,
                   SparseConvUnetBatch: NCMSparseConvUnetBatch}


class DeviceBatcher:
    """A batcher whose batches end on `device`: for Open3D-ML's test and
    inference loops (no workers), which do not move every batch kind."""

    def __init__(self, batcher, device):
        self.batcher, self.device = batcher, torch.device(device)

    def __getattr__(self, name):
        return getattr(self.__dict__['batcher'], name)

    def collate_fn(self, batches):
        out = self.batcher.collate_fn(batches)
        out['data'] = move_batch(out['data'], self.device)
        return out


def _moved(value, function):
    if isinstance(value, torch.Tensor):
        return function(value)
    if isinstance(value, list) and value and isinstance(value[0],
                                                        torch.Tensor):
        return [function(t) for t in value]
    return value


def move_batch(batch, device):
    """Copy a collated batch to `device` (in place), the NCM's additions
    included: a HostKPConvBatch without blocking, a dict of tensors (the
    DefaultBatcher's) tensor by tensor without blocking, a stock batch
    object with its own `to`."""
    to_device = functools.partial(torch.Tensor.to, device=device,
                                  non_blocking=True)
    if isinstance(batch, HostKPConvBatch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        for key, value in batch.items():
            batch[key] = _moved(value, to_device)
        return batch
    if hasattr(batch, 'to'):
        batch.to(device)
    for key, value in vars(batch).items():
        if key.startswith(NCM_PREFIX):
            setattr(batch, key, _moved(value, to_device))
    return batch
