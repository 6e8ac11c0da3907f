"""A trained model applied to a whole preprocessed cloud: the backbone's
covering (spheres.py for KPConv, crops.py for RandLA-Net, scenes.py for the
whole-scene backbones) cut into jobs, each job built into batches (in the
main process, or in DataLoader workers while the model runs), scores
averaged over every pass that saw a point, votes with seeded geometric
transforms (votes.py).

A point's scores are the mean softmax over all (vote, pass) that held it; a
point no pass held takes the scores of the nearest point that was held.
"""
import logging
import time
from typing import NamedTuple

import numpy as np
import torch

from ..training.batcher import move_batch

log = logging.getLogger(__name__)


class CloudScores(NamedTuple):
    """probabilities [M, C] float32 of the preprocessed points; passes [M]:
    how many (vote, pass) held each point (0: it took its nearest held
    point's); spheres: passes (spheres, crops or scenes) per vote; seconds:
    {'spheres' (planning, search, crop, transform, collate; with workers:
    the wait for the next batch), 'forward' (the model and its softmax),
    'scores' (accumulation)}."""
    probabilities: np.ndarray
    passes: np.ndarray
    spheres: int
    seconds: dict


def covering_class(model):
    """The covering a model is applied with: KPConv's spheres, RandLA-Net's
    crops, or the whole scene (PointTransformer, SparseConvUnet); PVCNN is
    a ValueError (its ops have no CPU kernel in the CPU wheel, and it has
    not been run here)."""
    from open3d._ml3d.torch.models import (KPFCNN, PVCNN, PointTransformer,
                                           RandLANet, SparseConvUnet)
    from .crops import CropCovering
    from .scenes import SceneCovering
    from .spheres import SphereCovering
    for kind, covering in ((KPFCNN, SphereCovering), (RandLANet, CropCovering),
                           ((PointTransformer, SparseConvUnet),
                            SceneCovering)):
        if isinstance(model, kind):
            return covering
    if isinstance(model, PVCNN):
        raise ValueError("PVCNN models cannot be applied by ncm-predict: "
                         "PVCNN's Open3D ops have no CPU kernel in the CPU "
                         "wheel and it has not been run here")
    raise ValueError(f"{type(model).__name__}: not a backbone ncm-predict "
                     f"knows (KPFCNN, RandLANet, PointTransformer, "
                     f"SparseConvUnet)")


def default_batch_size(model, pipeline_cfg):
    """RandLA-Net's crops a batch unless told: the run's test_batch_size
    (else batch_size, else 1); None for the others (KPConv: up to its
    batch_limit points; whole scenes: one)."""
    from open3d._ml3d.torch.models import RandLANet
    if not isinstance(model, RandLANet):
        return None
    pipeline_cfg = pipeline_cfg or {}
    return int(pipeline_cfg.get('test_batch_size') or
               pipeline_cfg.get('batch_size') or 1)


class _Jobs(torch.utils.data.Dataset):
    """A covering's jobs as a dataset: item i is the built batches of job
    i (for DataLoader workers)."""

    def __init__(self, covering):
        self.covering = covering

    def __len__(self):
        return len(self.covering.jobs)

    def __getitem__(self, index):
        return self.covering.build(self.covering.jobs[index])


def built_jobs(covering, num_workers):
    """Each job's [(inputs, held)], in job order: built here, or by
    `num_workers` DataLoader workers (started from the fork server, each
    with a copy of the cloud and a weightless copy of the model) while the
    model runs on the previous ones."""
    if num_workers == 0:
        return (covering.build(job) for job in covering.jobs)
    import functools
    import os

    from ..training.samplers import worker_context, worker_init
    return iter(torch.utils.data.DataLoader(
        _Jobs(covering), batch_size=None, shuffle=False,
        num_workers=num_workers, multiprocessing_context=worker_context(),
        worker_init_fn=functools.partial(worker_init, main_pid=os.getpid()),
        collate_fn=_as_built))


def _as_built(built):
    return built


def predict_cloud(model, data, votes=1, seed=0, device='cpu', progress=None,
                  vote_indices=None, batch_size=None, num_workers=0):
    """CloudScores of a model on a preprocessed cloud (its `preprocess`
    output: point [M, 3], feat, search_tree).

    votes: the number of coverings (vote_indices: which votes, e.g. [1] to
    recompute one alone). batch_size: at most this many spheres or crops a
    batch (KPConv: else up to its batch_limit points; RandLA-Net: else 1).
    num_workers: DataLoader workers building the batches (0: here).
    progress: a tqdm-like object updated with the points of each batch."""
    device = torch.device(device)
    points = np.asarray(data['point'])
    num_points, num_classes = len(points), model.cfg.num_classes
    votes = list(range(votes) if vote_indices is None else vote_indices)
    clock = time.perf_counter
    seconds = dict.fromkeys(('spheres', 'forward', 'scores'), 0.0)
    start = clock()
    covering = covering_class(model)(model, data, votes, seed, batch_size)
    seconds['spheres'] += clock() - start
    sums = torch.zeros((num_points, num_classes), dtype=torch.float64)
    passes = torch.zeros(num_points, dtype=torch.int64)
    model.eval()
    model.device = device  # Open3D-ML's forward passes read it
    with torch.no_grad():
        jobs = built_jobs(covering, num_workers)
        while True:
            start = clock()
            built = next(jobs, None)
            seconds['spheres'] += clock() - start
            if built is None:
                break
            for inputs, held in built:
                start = clock()
                batch = move_batch(inputs['data'], device)
                logits = model(batch).reshape(-1, num_classes)
                probabilities = torch.softmax(logits.float(), dim=1).cpu()
                done = clock()
                index = torch.from_numpy(held)
                if len(index) != len(probabilities):
                    raise RuntimeError(
                        f"{type(model).__name__} gave {len(probabilities)} "
                        f"rows of scores for a batch of {len(index)} points")
                sums.index_add_(0, index, probabilities.double())
                passes.index_add_(0, index, torch.ones_like(index))
                seconds['forward'] += done - start
                seconds['scores'] += clock() - done
                if progress is not None:
                    progress.update(len(index))
    passes = passes.numpy()
    probabilities = np.zeros((num_points, num_classes), dtype=np.float32)
    seen = passes > 0
    probabilities[seen] = (sums.numpy()[seen] / passes[seen, None])
    if not seen.all():
        probabilities[~seen] = probabilities[seen][
            nearest_held(points, seen)]
        log.info("%d of %d points were in no sphere; they take the scores "
                 "of the nearest point that was", int((~seen).sum()),
                 num_points)
    return CloudScores(probabilities, passes, covering.passes_per_vote,
                       seconds)


def nearest_held(points, seen):
    """For every point not seen, the row (among the seen ones) of its
    nearest seen point."""
    from sklearn.neighbors import KDTree
    if not seen.any():
        raise ValueError("no sphere held any point of the cloud")
    tree = KDTree(points[seen])
    return tree.query(points[~seen], k=1, return_distance=False)[:, 0]


def projection(data, num_points, source):
    """[num_points] rows of the preprocessed cloud that carry each original
    point's scores: the model's `proj_inds`, or every point itself for a
    preprocess that keeps them all in order (SparseConvUnet's); a
    preprocess that dropped points without saying which is a ValueError
    naming `source`."""
    if 'proj_inds' in data:
        return np.asarray(data['proj_inds']).reshape(-1)
    if num_points is None or len(data['point']) == num_points:
        return np.arange(num_points)
    raise ValueError(f"{source}: the model's preprocess kept "
                     f"{len(data['point'])} of {num_points} points (outside "
                     f"its grid) without saying which")
