"""The scene-level target NCM (`model.ncm.target: scene`) and how it travels.

With `target: sample` (the default) the target NCM of a training sphere is
counted from the sphere's own labels. With `target: scene` it is counted once
from the labels of the whole scene, so every sphere of a scene is pulled
towards the same matrix (the paper's section 4.3 ablation).

Neighborhood of the scene target (the training one, where practical): the
scene as the model preprocesses it (grid-subsampled at first_subsampling_dl),
and for `neighborhood: kpconv` KPConv's own layer-0 radius search
(`batch_neighbors` at conv_radius * first_subsampling_dl, or the deform
radius when the first layer is deformable), for `knn` the k nearest
neighbors. Training spheres are rescaled by augmentation before their
neighbor search; the scene target is counted without augmentation.
Memory: the dense neighbor list of the whole subsampled scene, [N, K].

Travel: the model's `preprocess` adds `ncm_target [C, C]` to the preprocessed
scene, so Open3D-ML's preprocessing cache stores it with the scene; its
`transform` repeats it once per sphere as `ncm_target_list`, a key the stock
KPConvBatch ignores; `training.batcher.NCMConcatBatcher` stacks those of the spheres the
batch kept into `batch.ncm_target [B, C, C]`. The stock ConcatBatcher and
KPConvBatch are used unchanged.
"""
import numpy as np
import torch

from .losses import checked_class_indices, knn_neighbors
from .ncm import cooccurrence_from_matrix, neighbor_matrix


def layer0_radius(model_cfg):
    """Radius of KPConv's first-layer neighbor lists, as KPConvBatch sets it."""
    radius = model_cfg.first_subsampling_dl * model_cfg.conv_radius
    first_layer = []
    for block in model_cfg.architecture:
        if any(word in block for word in ('pool', 'strided', 'global',
                                          'upsample')):
            break
        first_layer.append(block)
    if any('deformable' in block for block in first_layer):
        radius *= model_cfg.deform_radius / model_cfg.conv_radius
    return radius


def cloud_neighbors(points, ncm_cfg, model_cfg):
    """[N, K] neighbor indices of one whole cloud, index N = none."""
    points = torch.as_tensor(np.ascontiguousarray(points, dtype=np.float32))
    lengths = torch.tensor([len(points)])
    if ncm_cfg.neighborhood == 'knn':
        return knn_neighbors(points, lengths, ncm_cfg.k)
    from open3d._ml3d.torch.models.kpconv import batch_neighbors
    return torch.as_tensor(batch_neighbors(
        points.numpy(), points.numpy(), [len(points)], [len(points)],
        layer0_radius(model_cfg))).long()


def cloud_ncm(classes, valid, neighbors, num_classes):
    """NCM of one cloud from class indices and the valid mask.

    classes [N] long, valid [N] bool, neighbors [N, K] -> (ncm [C, C] float64
    numpy, number of valid pairs). The pair count weighs clouds when their
    matrices are pooled over a split.
    """
    lengths = torch.tensor([len(classes)])
    adjacency = neighbor_matrix(neighbors, lengths, valid, torch.float64)
    scores = torch.nn.functional.one_hot(classes, num_classes).double()
    ncm = cooccurrence_from_matrix(scores, adjacency, lengths)[0]
    return ncm.numpy(), int(adjacency.values().sum())


def scene_target(points, labels, model_cfg, ncm_cfg):
    """Target NCM [C, C] float32 of a whole preprocessed scene.

    points [N, 3] (the subsampled scene), labels [N] dataset labels.
    """
    num_classes = model_cfg.num_classes
    indices, valid = checked_class_indices(
        torch.as_tensor(np.asarray(labels).reshape(-1)).long(), num_classes,
        model_cfg.ignored_label_inds)
    neighbors = cloud_neighbors(points, ncm_cfg, model_cfg)
    ncm, _ = cloud_ncm(indices, valid, neighbors, num_classes)
    return ncm.astype(np.float32)
