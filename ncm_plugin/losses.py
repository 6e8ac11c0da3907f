"""NCMConfig and NCMLoss: the settings of the NCM term and the glue from a
batch (its logits, labels, neighbor lists and cloud lengths) to the math in
`ncm.py`."""
from dataclasses import asdict, dataclass, fields

import torch

from .ncm import (DIRECTIONS, cooccurrence_from_matrix, ncm_kl,
                  neighbor_matrix, pool_scores)

# 'model': the backbone's own neighbor lists (KPConv's radius lists, RandLA-Net's
# kNN lists); 'knn': k nearest neighbors built on the CPU when batching.
NEIGHBORHOODS = ('model', 'knn')
# Earlier spellings still read: NCMKPFCNN's own lists were called 'kpconv'.
NEIGHBORHOOD_ALIASES = {'kpconv': 'model'}
# Where the target NCM comes from: the labels of the sampled sphere, or the
# whole scene's (computed once per scene by scene_target.py).
TARGETS = ('sample', 'scene')


@dataclass(frozen=True)
class NCMConfig:
    """The `model.ncm` section of a config: the one place its defaults live.

    weight: factor of the NCM term in the training loss (0 = the stock
        model's loss).
    direction: 'forward' = KL(target || prediction), 'reverse' = KL(prediction
        || target); the paper uses reverse for large outdoor scenes.
    eps: smoothing of both matrices before the KL.
    neighborhood: 'model' reuses the neighbor lists the backbone's batch
        already carries (KPConv: layer-0 radius lists, radius conv_radius *
        first_subsampling_dl; RandLA-Net: its first layer's kNN lists);
        backbones without such lists refuse it. 'knn' searches the `k`
        nearest neighbors of every point inside its own cloud (Open3D's
        knn_search, on the CPU when the batch is collated). 'kpconv' is
        read as 'model'.
    k: neighbors per point for 'knn'.
    layer: the KPConv layer whose points the NCM is taken on: 0 = the input
        points; L > 0 = the points after L subsamplings, each carrying the
        mean class distribution of the input points pooled into it, with
        that layer's neighbor lists (a wider radius). The architecture must
        have the layer (and, for 'model', convolutions in it). KPConv only.
    target: 'sample' counts the target NCM on the sampled sphere's labels;
        'scene' counts it once on the whole scene's labels (scene_target.py,
        layer 0 only) and the batcher carries it into the batch. KPConv
        only.
    """
    weight: float = 1.0
    direction: str = 'forward'
    eps: float = 1e-6
    neighborhood: str = 'model'
    k: int = 16
    layer: int = 0
    target: str = 'sample'

    @classmethod
    def from_dict(cls, section, where='model.ncm'):
        """Validate a config section; errors name the offending key."""
        section = dict(section or {})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(section) - set(known))
        if unknown:
            raise KeyError(f"{where}: unknown key(s) {unknown}; known keys are "
                           f"{sorted(known)}")
        for key, value in section.items():
            expected = known[key].type
            accepted = (int, float) if expected is float else expected
            if isinstance(value, bool) or not isinstance(value, accepted):
                name = expected.__name__
                article = 'an' if name[0] in 'aeiou' else 'a'
                raise TypeError(f"{where}.{key} must be {article} {name}, "
                                f"got {value!r}")
            section[key] = expected(value)
        if 'neighborhood' in section:
            section['neighborhood'] = NEIGHBORHOOD_ALIASES.get(
                section['neighborhood'], section['neighborhood'])
        cfg = cls(**section)
        if cfg.direction not in DIRECTIONS:
            raise ValueError(f"{where}.direction must be one of {DIRECTIONS}, "
                             f"got {cfg.direction!r}")
        if cfg.neighborhood not in NEIGHBORHOODS:
            raise ValueError(f"{where}.neighborhood must be one of "
                             f"{NEIGHBORHOODS}, got {cfg.neighborhood!r}")
        if cfg.target not in TARGETS:
            raise ValueError(f"{where}.target must be one of {TARGETS}, got "
                             f"{cfg.target!r}")
        if cfg.weight < 0:
            raise ValueError(f"{where}.weight must be >= 0, got {cfg.weight}")
        if not cfg.eps > 0:
            raise ValueError(
                f"{where}.eps must be > 0, got {cfg.eps}: it smooths the "
                f"matrices, whose zeros make the KL infinite or NaN without it")
        if cfg.k < 1:
            raise ValueError(f"{where}.k must be >= 1, got {cfg.k}")
        if cfg.layer < 0:
            raise ValueError(f"{where}.layer must be >= 0, got {cfg.layer}")
        if cfg.target == 'scene' and cfg.layer != 0:
            raise ValueError(f"{where}.target 'scene' is counted on the input "
                             f"points (layer 0), got layer {cfg.layer}")
        return cfg

    def check_architecture(self, architecture, where='model.ncm'):
        """Raise ValueError if `layer` is not a layer of `architecture` (or,
        with the kpconv neighborhood, one without neighbor lists)."""
        layers = kpconv_layers(architecture)
        if self.layer >= len(layers):
            raise ValueError(
                f"{where}.layer is {self.layer}, but model.architecture has "
                f"{len(layers)} layer(s) (0..{len(layers) - 1}: one more than "
                f"its strided/pool blocks before the first upsample)")
        if self.neighborhood == 'model' and not layers[self.layer]:
            raise ValueError(
                f"{where}.layer is {self.layer}, but that layer of "
                f"model.architecture has no convolution block, so KPConv "
                f"builds no neighbor lists for it; choose another layer or "
                f"neighborhood: knn")

    def to_dict(self):
        return asdict(self)


def kpconv_layers(architecture):
    """[has neighbor lists] for each layer KPConv's batcher builds.

    As Open3D-ML's ConcatBatcher: a layer ends at each strided/pool block, and
    the last one at the first upsample/global block; a layer gets neighbor
    lists when it holds a block other than those.
    """
    layers, blocks = [], []
    for block in architecture:
        ends = any(word in block for word in ('pool', 'strided', 'global',
                                              'upsample'))
        if not ends:
            blocks.append(block)
            continue
        layers.append(bool(blocks))
        blocks = []
        if 'global' in block or 'upsample' in block:
            break
    return layers


def class_indices(labels, num_classes, ignored_label_inds):
    """Dataset labels -> logit columns, as Open3D-ML's filter_valid_label.

    labels [N] long. Ignored labels are dropped from the label range, so every
    label above an ignored one (>= 0) moves down by one. Returns (indices [N] long,
    valid [N] bool); indices of invalid points are 0. Nothing is read on the
    host (the training step calls it); `checked_class_indices` also checks
    the label range.
    """
    # Compared with Python numbers, one op per ignored label: a tensor of
    # them built on the device would be a blocking host-to-device copy in
    # every step.
    valid = torch.ones_like(labels, dtype=torch.bool)
    shift = torch.zeros_like(labels)
    for ignored in ignored_label_inds:
        valid &= labels != int(ignored)
        # Only ignored labels >= 0 free a logit column (a negative one, like
        # the -1 of the PointTransformer, SparseConvUnet and PVCNN configs,
        # is outside the label range), as in filter_valid_label.
        if ignored >= 0:
            shift += labels > int(ignored)
    indices = torch.where(valid, labels - shift, torch.zeros_like(labels))
    return indices, valid


def checked_class_indices(labels, num_classes, ignored_label_inds):
    """class_indices, raising ValueError for a label out of range."""
    indices, valid = class_indices(labels, num_classes, ignored_label_inds)
    if valid.any() and int(indices[valid].max()) >= num_classes:
        raise ValueError(
            f"label {int(labels[valid].max())} is out of range for "
            f"num_classes={num_classes} with ignored_label_inds="
            f"{list(ignored_label_inds)}")
    return indices, valid


def row_splits(counts):
    """[B + 1] int64 row splits (0, then running totals) of `counts` points
    per cloud, as Open3D's neighbour searches take them, on the CPU."""
    counts = torch.as_tensor(counts).cpu().long()
    splits = torch.zeros(counts.numel() + 1, dtype=torch.int64)
    splits[1:] = torch.cumsum(counts, 0)
    return splits


def knn_neighbors(points, lengths, k):
    """k nearest neighbors of every point inside its own cloud.

    points [N, 3], lengths [B] -> [N, k] long, index N where a cloud has fewer
    than k other points (KPConv's shadow convention). The point itself is
    excluded.
    """
    from open3d.ml.torch.ops import knn_search, ragged_to_dense
    # On the CPU: Open3D wants row splits there, and its kNN has no CUDA
    # kernel in every build (Open3D-ML issue 643).
    device = points.device
    points = points.detach().float().cpu().contiguous()
    splits = row_splits(lengths)
    # knn_search counts the query point among the k before dropping it.
    result = knn_search(points, points, k + 1, splits, splits,
                        ignore_query_point=True)
    shadow = torch.tensor([points.shape[0]], dtype=torch.int64)
    dense = ragged_to_dense(result.neighbors_index.long().reshape(-1, 1),
                            result.neighbors_row_splits, k, shadow)
    return dense.squeeze(2).to(device)


class NCMLoss(torch.nn.Module):
    """Weighted NCM term of a batch: weight * KL(NCM_target, NCM_pred).

    `term` takes any stacked batch (what each backbone's `ncm_layout` gives);
    `forward` reads a KPConv batch.

    The target NCM comes from the labels (of the sphere, or of the whole scene
    with target 'scene', carried by the batch), the predicted one from the softmax
    of the logits; both use the same neighborhood and the same valid points.
    After each call, `last_kl` holds the unweighted KL (detached) for logging.
    """

    def __init__(self, num_classes, ignored_label_inds=(), weight=1.0,
                 direction='forward', eps=1e-6, neighborhood='model', k=16,
                 layer=0, target='sample'):
        super().__init__()
        self.cfg = NCMConfig.from_dict(
            dict(weight=weight, direction=direction, eps=eps,
                 neighborhood=neighborhood, k=k, layer=layer, target=target))
        self.num_classes = num_classes
        self.ignored_label_inds = tuple(ignored_label_inds)
        self.last_kl = None

    def scene_targets(self, batch):
        """[B, C, C] targets the batcher carried (target: scene)."""
        target = getattr(batch, 'ncm_target', None)
        if target is None:
            raise ValueError(
                "model.ncm.target is 'scene' but the batch carries no "
                "ncm_target: batch with scene_target.NCMConcatBatcher (the "
                "NCMSemanticSegmentation pipeline does)")
        if target.shape[0] != len(batch.lengths[0]):
            raise ValueError(f"{target.shape[0]} scene targets for "
                             f"{len(batch.lengths[0])} clouds in the batch")
        return target

    def neighbors(self, batch):
        """[N, K] neighbor indices of the points of `layer`, index N = none.

        kNN lists come with the batch (`ncm_neighbors`, built by the
        pipeline's batcher); without them they are built here, on the CPU."""
        layer = self.cfg.layer
        if self.cfg.neighborhood == 'knn':
            prepared = getattr(batch, 'ncm_neighbors', None)
            if prepared is not None:
                return prepared
            return knn_neighbors(batch.points[layer], batch.lengths[layer],
                                 self.cfg.k)
        return batch.neighbors[layer]

    def forward(self, logits, labels, batch):
        """The term of a KPConv batch: logits [N, C] float, labels [N] dataset
        labels, batch a KPConvBatch (its layer lists, pools and lengths)."""
        layer = self.cfg.layer
        target = (self.scene_targets(batch) if self.cfg.target == 'scene'
                  else None)
        pools = batch.pools[:layer] if layer else ()
        return self.term(logits, labels, self.neighbors(batch),
                         batch.lengths[layer], pools=pools, target=target)

    def term(self, logits, labels, neighbors, lengths, pools=(), target=None):
        """weight * KL of the NCMs of any stacked batch.

        logits [N, C] float, labels [N] dataset labels: the rows the model's
        loss reads. pools: pooling lists (KPConv's convention, each [M, K]
        indexing the level before, index = its size for none) from those rows
        to the points the NCM is taken on, which carry the mean class
        distribution of the valid rows pooled into them (KPConv layer > 0,
        SparseConvUnet's voxels); none: the rows themselves.
        neighbors [M, K] and lengths [B] are of those points (index M = none).
        target: [B, C, C] NCMs to pull to instead of the labels' own.
        """
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be [N, num_classes="
                             f"{self.num_classes}], got {tuple(logits.shape)}")
        device = logits.device
        indices, valid = class_indices(labels.reshape(-1).to(device).long(),
                                       self.num_classes,
                                       self.ignored_label_inds)
        neighbors = neighbors.to(device, non_blocking=True)
        lengths = lengths.to(device, non_blocking=True)
        pools = [p.to(device, non_blocking=True) for p in pools]
        # float32 even under autocast: the KL of small probabilities needs it.
        with torch.autocast(device.type, enabled=False):
            # One-hot by comparison: torch's one_hot reads the largest label
            # on the host. (A label out of range would get no class here;
            # the cross entropy beside this term fails on it.)
            classes = torch.arange(self.num_classes, device=device)
            labels = (indices.unsqueeze(1) == classes).float()
            scores = torch.softmax(logits.float(), dim=1)
            if len(pools):
                labels, _ = pool_scores(labels, valid, pools)
                scores, valid = pool_scores(scores, valid, pools)
            # Without ignored labels every point is valid: the pairs need no
            # validity check (a gather over all N x K slots), known from the
            # config, not from the data.
            adjacency = neighbor_matrix(
                neighbors, lengths, valid if self.ignored_label_inds else None)
            if target is not None:
                target = target.to(device, non_blocking=True).float()
            else:
                target = cooccurrence_from_matrix(labels, adjacency, lengths)
            prediction = cooccurrence_from_matrix(scores, adjacency, lengths)
            kl = ncm_kl(target, prediction, self.cfg.direction, self.cfg.eps)
        self.last_kl = kl.detach()
        return self.cfg.weight * kl
