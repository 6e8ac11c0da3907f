"""A KPConv model applied to a whole preprocessed cloud: planned spheres
(layout.py), batched, scores averaged over every pass that saw a point,
votes with seeded geometric augmentations.

Vote 0 is the identity; vote v > 0 turns, scales and flips every sphere by
`vote_transform(cfg, v, seed)` (the config's augment_rotation, scale range
and symmetries; no noise, no colour drop), so that a vote can be recomputed
alone. A point's scores are the mean softmax over all (vote, sphere) passes
that held it; a point no sphere held (one beyond a sphere's point limit,
or in a sphere of fewer than min_in_points points) takes the scores of the
nearest point that was held.
"""
import contextlib
import logging
import time
from typing import NamedTuple

import numpy as np
import torch

from ..training.batcher import NCMConcatBatcher, move_batch
from ..training.samplers import seeded, sphere_seed
from .layout import batches_of, sphere_centres

log = logging.getLogger(__name__)


class CloudScores(NamedTuple):
    """probabilities [M, C] float32 of the preprocessed points; passes [M]:
    how many (vote, sphere) passes held each point (0: it took its nearest
    held point's); spheres: spheres run per vote; seconds: {'spheres'
    (search, crop, transform, collate), 'forward' (the model and its
    softmax), 'scores' (accumulation)}."""
    probabilities: np.ndarray
    passes: np.ndarray
    spheres: int
    seconds: dict


def vote_transform(cfg, vote, seed=0):
    """(R [3, 3], scale [3]) of vote `vote`: identity for vote 0, else a
    rotation about the vertical (augment_rotation 'vertical'; 'all' turns
    about any axis too, 'none' not at all), a scale in [augment_scale_min,
    augment_scale_max] (per axis with augment_scale_anisotropic) and the
    flips of augment_symmetries, drawn from a generator seeded by (seed,
    vote)."""
    if vote == 0:
        return np.eye(3, dtype=np.float32), np.ones(3, dtype=np.float32)
    rng = np.random.default_rng([seed, vote])
    rotation = cfg.get('augment_rotation', 'vertical')
    R = np.eye(3)
    if rotation in ('vertical', 'all'):
        theta = rng.uniform(0, 2 * np.pi)
        c, s = np.cos(theta), np.sin(theta)
        R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    if rotation == 'all':
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        angle = rng.uniform(0, 2 * np.pi)
        K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]],
                      [-axis[1], axis[0], 0]])
        R = (np.eye(3) + np.sin(angle) * K +
             (1 - np.cos(angle)) * K @ K) @ R
    low = cfg.get('augment_scale_min', 1.0)
    high = cfg.get('augment_scale_max', 1.0)
    size = 3 if cfg.get('augment_scale_anisotropic', False) else 1
    scale = np.broadcast_to(rng.uniform(low, high, size), (3,)).copy()
    flips = np.asarray(cfg.get('augment_symmetries', [False] * 3), dtype=bool)
    scale[flips & (rng.integers(0, 2, 3) == 1)] *= -1
    return R.astype(np.float32), scale.astype(np.float32)


class _WholeCrop:
    """KPFCNN's point sampler for a sphere cropped beforehand: all of it."""

    def __init__(self, centre):
        self.centre = np.asarray(centre, dtype=np.float32).reshape(1, 3)
        self.used = False

    def __call__(self, pc=None, **unused):
        if self.used:
            raise RuntimeError("the transform asked for a second sphere")
        self.used = True
        return pc, np.arange(len(pc)), self.centre


@contextlib.contextmanager
def no_colour_drop(model):
    """KPFCNN's transform zeroes the colour features with probability
    1 - augment_color even at test time: not while predicting."""
    settings = model.cfg._cfg_dict
    saved = settings.get('augment_color')
    settings['augment_color'] = 1.0
    try:
        yield
    finally:
        settings['augment_color'] = saved


def sphere_item(model, data, indices, centre, seed):
    """The transformed item of the sphere `indices` (into data's points)
    around `centre`, and the points it holds (some are dropped beyond the
    model's point limit, as in training), seeded."""
    crop = {'point': data['point'][indices],
            'feat': None if data['feat'] is None else data['feat'][indices],
            'label': np.zeros(len(indices), dtype=np.int32),
            'search_tree': None}
    if 'ncm_target' in data:  # a scene-target model's transform reads it
        crop['ncm_target'] = data['ncm_target']
    model.trans_point_sampler = _WholeCrop(centre)
    attr = {'split': 'predict', 'name': 'sphere', 'sphere_seed': seed}
    with seeded(seed):
        item = model.transform(crop, attr, is_test=True)
    held = indices[item['r_mask_list'][0]]
    return {'data': item, 'attr': attr}, held


def predict_cloud(model, data, votes=1, seed=0, device='cpu', progress=None,
                  vote_indices=None):
    """CloudScores of a KPFCNN model on a preprocessed cloud (its
    `preprocess` output: point [M, 3], feat, search_tree).

    votes: the number of coverings (vote_indices: which votes, e.g. [1] to
    recompute one alone). progress: a tqdm-like object updated with the
    points of each batch."""
    cfg = model.cfg
    device = torch.device(device)
    points = np.asarray(data['point'])
    num_points, num_classes = len(points), cfg.num_classes
    radius = cfg.in_radius
    centres = sphere_centres(points, radius)
    tree = data['search_tree']
    # Counted first, searched batch by batch: the members of every sphere
    # at once would take ~6 indices a point.
    counts = tree.query_radius(centres, r=radius, count_only=True)
    min_points = min(cfg.get('min_in_points', 3), cfg.max_in_points)
    keep = np.flatnonzero(counts >= min_points)
    limit = min(cfg.batch_limit, cfg.max_in_points)
    groups = batches_of(np.minimum(counts[keep], limit), int(cfg.batch_limit))
    sums = torch.zeros((num_points, num_classes), dtype=torch.float64)
    passes = torch.zeros(num_points, dtype=torch.int64)
    # Sorted neighbor lists: the same file gives the same scores, bit for
    # bit (Open3D's threaded search orders them differently run to run).
    batcher = NCMConcatBatcher(sort_neighbors=True)
    model.eval()
    votes = list(range(votes) if vote_indices is None else vote_indices)
    seconds = dict.fromkeys(('spheres', 'forward', 'scores'), 0.0)
    clock = time.perf_counter
    transforms = {vote: vote_transform(cfg, vote, seed) for vote in votes}
    with torch.no_grad(), no_colour_drop(model):
        # Each batch's spheres searched once, for every vote.
        for group in groups:
            searched = clock()
            spheres = keep[group]
            members = tree.query_radius(centres[spheres], r=radius)
            seconds['spheres'] += clock() - searched
            for vote in votes:
                R, scale = transforms[vote]
                start = clock()
                items, held = [], []
                for sphere, indices in zip(spheres, members):
                    item, points_held = sphere_item(
                        model, data, indices, centres[sphere],
                        sphere_seed(seed, vote, int(sphere)))
                    p = item['data']['p_list'][0]
                    item['data']['p_list'][0] = ((p @ R.T) * scale).astype(
                        np.float32)
                    items.append(item)
                    held.append(points_held)
                inputs = batcher.collate_fn(items)
                batch = inputs['data']
                if len(batch.lengths[0]) != len(items):
                    raise RuntimeError(
                        f"the batcher kept {len(batch.lengths[0])} of "
                        f"{len(items)} spheres (model.batch_limit "
                        f"{cfg.batch_limit})")
                move_batch(batch, device)
                ready = clock()
                logits = model(batch)
                probabilities = torch.softmax(logits.float(), dim=1).cpu()
                done = clock()
                index = torch.from_numpy(
                    np.concatenate(held).astype(np.int64))
                sums.index_add_(0, index, probabilities.double())
                passes.index_add_(0, index, torch.ones_like(index))
                seconds['spheres'] += ready - start
                seconds['forward'] += done - ready
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
    return CloudScores(probabilities, passes, len(keep), seconds)


def nearest_held(points, seen):
    """For every point not seen, the row (among the seen ones) of its
    nearest seen point."""
    from sklearn.neighbors import KDTree
    if not seen.any():
        raise ValueError("no sphere held any point of the cloud")
    tree = KDTree(points[seen])
    return tree.query(points[~seen], k=1, return_distance=False)[:, 0]
