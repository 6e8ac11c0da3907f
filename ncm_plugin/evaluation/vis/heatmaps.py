"""Heatmaps of the target NCM and of the NCMs the baseline and the NCM model
predict, for one cloud or pooled over a split: which co-occurrences (class a
next to class b) each model over- or under-predicts.

The matrices are counted like the scene target (scene_target.py): the cloud
grid-subsampled at the model's first_subsampling_dl (majority label per cell,
for the ground truth and for each run's predictions alike) and the training
neighborhood. A predicted NCM here is that of the predicted labels. Points
whose ground truth is ignored are left out of every matrix. Pooled over a
split, each cloud weighs by its number of neighbor pairs.
"""
import numpy as np
import torch

from ...losses import checked_class_indices
from ...ncm import ncm_kl
from ...scene_target import cloud_ncm, cloud_neighbors


def subsample(points, labels, grid_size):
    """Grid subsampling with the majority label of every cell (KPConv's)."""
    from open3d._ml3d.datasets.utils import DataProcessing
    sub_points, sub_labels = DataProcessing.grid_subsampling(
        np.ascontiguousarray(points, dtype=np.float32),
        labels=np.ascontiguousarray(labels, dtype=np.int32),
        grid_size=grid_size)
    return sub_points, sub_labels.reshape(-1)


def cloud_matrices(points, truth, predictions, model_cfg, ncm_cfg):
    """Target and predicted NCMs of one cloud.

    truth [N], predictions {run: [N]} dataset labels -> ({'target': [C, C],
    run: [C, C], ...}, number of neighbor pairs).
    """
    sub_points, sub_truth = subsample(points, truth, model_cfg.first_subsampling_dl)
    num_classes, ignored = model_cfg.num_classes, model_cfg.ignored_label_inds
    target_classes, valid = checked_class_indices(
        torch.as_tensor(sub_truth).long(), num_classes, ignored)
    neighbors = cloud_neighbors(sub_points, ncm_cfg, model_cfg)
    target, pairs = cloud_ncm(target_classes, valid, neighbors, num_classes)
    matrices = {'target': target}
    for run, labels in predictions.items():
        run_points, run_labels = subsample(points, labels,
                                           model_cfg.first_subsampling_dl)
        if not np.array_equal(run_points, sub_points):
            raise RuntimeError("grid subsampling is not deterministic")
        classes, _ = checked_class_indices(
            torch.as_tensor(run_labels).long(), num_classes, ())
        matrices[run], _ = cloud_ncm(classes, valid, neighbors, num_classes)
    return matrices, pairs


def pool(per_cloud):
    """[(matrices, pairs)] -> matrices averaged with the pair counts."""
    total = sum(pairs for _, pairs in per_cloud)
    if total == 0:
        raise ValueError("no cloud has a pair of labelled neighbors")
    keys = per_cloud[0][0].keys()
    return {k: sum(m[k] * pairs for m, pairs in per_cloud) / total
            for k in keys}


def kl_to_target(matrices, run, eps):
    """KL(target || run) of two [C, C] matrices, as the forward NCM loss."""
    target = torch.as_tensor(matrices['target'])[None]
    return float(ncm_kl(target, torch.as_tensor(matrices[run])[None],
                        'forward', eps))


def plot(matrices, names, runs, title, path, eps=1e-6):
    """Write the heatmap figure: the three matrices (log scale) above the
    differences prediction - target and which model is closer to it."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm, TwoSlopeNorm

    size = max(4.5, 0.42 * len(names) + 2.0)
    fig, axes = plt.subplots(2, 3, figsize=(3 * size, 2 * size),
                             constrained_layout=True)
    peak = max(float(m.max()) for m in matrices.values())
    floor = max(peak * 1e-5, 1e-9)
    log = LogNorm(vmin=floor, vmax=max(peak, floor * 10))
    panels = [('target NCM (ground truth)', matrices['target'])]
    panels += [(f'{run}: predicted NCM, KL(target||{run}) = '
                f'{kl_to_target(matrices, run, eps):.4f}', matrices[run])
               for run in runs]
    for ax, (label, matrix) in zip(axes[0], panels):
        image = ax.imshow(np.maximum(matrix, floor), cmap='viridis', norm=log)
        ax.set_title(label, fontsize=10)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8,
                 label='share of neighbor pairs (log)')
    errors = {run: matrices[run] - matrices['target'] for run in runs}
    bound = max(float(np.abs(e).max()) for e in errors.values()) or 1.0
    closer = np.abs(errors[runs[1]]) - np.abs(errors[runs[0]])
    diverging = TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound)
    rows = [(f'|{runs[1]} - target| - |{runs[0]} - target|\n(blue: '
             f'{runs[1]} closer, red: {runs[0]} closer)', closer)]
    rows += [(f'{run} - target (red: too often, blue: too rarely)',
              errors[run]) for run in runs]
    for ax, (label, matrix) in zip(axes[1], rows):
        image = ax.imshow(matrix, cmap='RdBu_r', norm=diverging)
        ax.set_title(label, fontsize=10)
    fig.colorbar(image, ax=axes[1].tolist(), shrink=0.8,
                 label='difference of shares')
    for ax in axes.ravel():
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel('neighbor class b')
        ax.set_ylabel('centre class a')
    fig.suptitle(title)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def clouds_with_predictions(split, runs):
    """Names of the split's clouds that every run has a prediction for."""
    from .compare import run_predictions
    names = []
    for i in range(len(split)):
        name = split.get_attr(i)['name']
        try:
            for run in runs:
                run_predictions(run, name)
        except FileNotFoundError:
            continue
        names.append(name)
    return names


def write_heatmaps(config, runs, out, names=('baseline', 'NCM'), cloud=None,
                   split='test', dataset_path=None):
    """Heatmaps of one cloud (or of every cloud of `split` both runs have
    predicted) into `out` (PNG) and the matrices into out.npz.

    Returns the pooled {'target', names[0], names[1]: [C, C]} in the paper's
    class order and the class names.
    """
    from pathlib import Path

    from open3d._ml3d.utils import Config
    from tqdm import tqdm

    from ...losses import NCMConfig
    from ..results import benchmark_of, class_names, paper_order
    from .compare import find_cloud, load_dataset, run_predictions

    dataset, model = load_dataset(config, dataset_path)
    model_cfg, ncm_cfg = Config(model), NCMConfig.from_dict(model.get('ncm'))
    split_data = dataset.get_split(split)
    clouds = [cloud] if cloud else clouds_with_predictions(split_data, runs)
    if not clouds:
        raise FileNotFoundError(f"no cloud of the {split} split has "
                                f"predictions in every run of {list(runs)}")
    per_cloud = []
    for name in tqdm(clouds, desc='NCM of clouds', unit='cloud'):
        data = split_data.get_data(find_cloud(split_data, name))
        predictions = {n: run_predictions(r, name) for n, r in zip(names, runs)}
        per_cloud.append(cloud_matrices(data['point'][:, :3], data['label'],
                                        predictions, model_cfg, ncm_cfg))
    pooled = pool(per_cloud)
    classes = class_names(dataset.get_label_to_names(),
                          model_cfg.ignored_label_inds)
    order = paper_order(classes, benchmark_of(dataset))
    index = [classes.index(c) for c in order]
    pooled = {k: m[np.ix_(index, index)] for k, m in pooled.items()}
    plural = 's' if len(clouds) > 1 else ''
    title = (f"{cloud} ({split})" if cloud else
             f"{len(clouds)} cloud{plural} of the {split} split, pooled")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(pooled, order, list(names), title, out, ncm_cfg.eps)
    np.savez(out.with_suffix('.npz'), classes=np.array(order), clouds=clouds,
             **pooled)
    return pooled, order
