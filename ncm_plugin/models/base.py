"""The NCM term on any Open3D-ML semantic-segmentation backbone.

`NCMTerm` is mixed in before the stock model class (`class NCMRandLANet(
NCMTerm, RandLANet)`): the stock architecture, preprocessing, batching and
inference stay; `get_loss` returns the stock loss + weight * NCM term. Each
backbone says only where the NCM's points are:

- `ncm_layout(results, batch)`: an `NCMLayout` of the logits and labels its
  loss reads, as a stacked batch ([N, C], [N]), and the neighbor lists and
  cloud lengths of the points the NCM is taken on (KPConv's convention:
  index = number of points for "no neighbor");
- `ncm_collate(batch)`: called on the CPU when a batch is collated (in a
  DataLoader worker or the main process, never in the training step) to add
  what the layout needs and the stock batch lacks, e.g. kNN lists.
"""
from typing import NamedTuple, Optional, Sequence

import torch

from ..losses import NCMConfig, NCMLoss, knn_neighbors


class NCMLayout(NamedTuple):
    """What the NCM term reads from one batch (see NCMLoss.term)."""
    logits: torch.Tensor            # [N, C], the rows the stock loss reads
    labels: torch.Tensor            # [N] dataset labels of those rows
    neighbors: torch.Tensor         # [M, K] of the NCM's points, M = none
    lengths: torch.Tensor           # [B] NCM points per cloud
    pools: Sequence[torch.Tensor] = ()   # rows -> NCM points, if not the rows
    target: Optional[torch.Tensor] = None  # [B, C, C] instead of the labels'


def dense_to_stacked(neighbors):
    """[B, N, K] per-cloud neighbor indices -> [B*N, K] into the stacked
    batch (cloud b's index i becomes b*N + i)."""
    num_clouds, num_points, _ = neighbors.shape
    offsets = torch.arange(num_clouds, device=neighbors.device) * num_points
    return (neighbors.long() + offsets.view(-1, 1, 1)).reshape(num_clouds *
                                                               num_points, -1)


def equal_lengths(num_clouds, num_points, device='cpu'):
    """[B] lengths of a dense batch of B clouds of N points each (made on
    `device`: no copy in the training step)."""
    return torch.full((num_clouds,), num_points, dtype=torch.long,
                      device=device)


def prepared(batch, key, model_name):
    """What `ncm_collate` added to a batch (a dict or a batch object)."""
    value = (batch.get(key) if isinstance(batch, dict) else
             getattr(batch, key, None))
    if value is None:
        raise ValueError(
            f"the batch has no {key}: {model_name} finds its NCM "
            f"neighborhood when the batch is collated; batch with the "
            f"NCMSemanticSegmentation pipeline, or call "
            f"model.ncm_collate(batch) after the stock batcher")
    return value


class NCMTerm:
    """Mixin: stock `get_loss` + weight * NCM (Gong, Ye, Ma, CVM 2022).

    Settings live under `model.ncm` (see `NCMConfig`); with weight 0 the
    loss is exactly the stock one. After each `get_loss`, `loss_terms` holds
    the separate terms as detached device tensors, for the pipeline to log
    (reading them here would make every step wait for the device).
    """
    # Description of the backbone's own neighbor lists (neighborhood:
    # 'model'), None when it has none.
    own_neighbors = None
    # The stock preprocess draws no random number: a training item's cloud
    # may be preprocessed once per process (training/items.py, KeptClouds).
    deterministic_preprocess = False

    def __init__(self, name=None, ncm=None, **kwargs):
        ncm_cfg = NCMConfig.from_dict(ncm)
        super().__init__(name=name or type(self).__name__,
                         ncm=ncm_cfg.to_dict(), **kwargs)
        self.check_ncm(ncm_cfg, self.cfg)
        self.ncm_loss = NCMLoss(self.cfg.num_classes,
                                self.cfg.ignored_label_inds,
                                **ncm_cfg.to_dict())
        self.loss_terms = {}

    @property
    def ncm_active(self):
        return self.ncm_loss.cfg.weight > 0

    @property
    def stock_name(self):
        """The name Open3D-ML's code that dispatches on names knows."""
        return self.stock_class().__name__

    @classmethod
    def stock_class(cls):
        """The Open3D-ML model class this one extends."""
        for base in cls.__mro__:
            if base.__module__.startswith('open3d.'):
                return base
        raise TypeError(f"{cls.__name__} extends no Open3D-ML model")

    @classmethod
    def check_ncm(cls, ncm_cfg, model_cfg, where='model.ncm'):
        """Refuse settings this backbone cannot honour (errors name the key);
        model_cfg: the `model` section (the config checker calls this before
        any model exists). The default: layer 0, target 'sample', and
        'model' only where the backbone has neighbor lists."""
        name = cls.__name__
        if ncm_cfg.neighborhood == 'model' and cls.own_neighbors is None:
            raise ValueError(
                f"{where}.neighborhood is 'model', but "
                f"{cls.stock_class().__name__} "
                f"builds no neighbor lists that {name} could reuse; set "
                f"{where}.neighborhood: knn (with {where}.k)")
        if ncm_cfg.layer != 0:
            raise ValueError(f"{where}.layer is {ncm_cfg.layer}, but {name} "
                             f"takes the NCM on its output points (layer 0)")
        if ncm_cfg.target != 'sample':
            raise ValueError(f"{where}.target is {ncm_cfg.target!r}, but "
                             f"{name} supports 'sample' only (scene targets "
                             f"are counted for KPConv's preprocessing)")

    def knn_lists(self, points, lengths):
        """[N, k] kNN lists of a stacked CPU batch (for ncm_collate)."""
        return knn_neighbors(points, lengths, self.ncm_loss.cfg.k)

    def ncm_collate(self, batch):
        """Add to a collated CPU batch what `ncm_layout` needs; returns it."""
        return batch

    def ncm_layout(self, results, batch):
        raise NotImplementedError

    def stock_terms(self, loss):
        """{name: tensor} of the stock loss's terms, for the logs."""
        return {'cross_entropy': loss}

    def get_loss(self, Loss, results, inputs, device):
        """Stock loss + weight * NCM term; (loss, labels, scores) as stock."""
        loss, labels, scores = super().get_loss(Loss, results, inputs, device)
        terms = self.stock_terms(loss)
        if self.ncm_active:
            layout = self.ncm_layout(results, inputs['data'])
            ncm_term = self.ncm_loss.term(*layout)
            loss = loss + ncm_term
            terms['ncm'] = ncm_term
            terms['ncm_kl'] = self.ncm_loss.last_kl
        # A Python number (rigid KPFCNN's regularizer is the float 0) is
        # filled on the device, not copied there: a copy would block.
        self.loss_terms = {
            k: v.detach() if isinstance(v, torch.Tensor) else
            torch.full((), float(v), device=loss.device)
            for k, v in terms.items()}
        return loss, labels, scores
