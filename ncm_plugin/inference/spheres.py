"""KPConv's covering: planned spheres (layout.py) of the model's in_radius,
batched up to its batch_limit points (and at most `batch_size` spheres).

A job is one batch of spheres, searched once for every vote: vote 0 as the
spheres are, vote v turned, scaled and flipped by `vote_transform` (votes.py)
about the sphere's centre. A point held by no sphere (beyond a sphere's
point limit, or in one of fewer than min_in_points points) takes the scores
of its nearest held point (engine.py).
"""
import contextlib

import numpy as np

from ..training.batcher import NCMConcatBatcher
from ..training.samplers import data_model, seeded, sphere_seed
from .layout import batches_of, sphere_centres
from .votes import vote_transform


class WholeCrop:
    """A model's point sampler for a crop chosen beforehand: all of it, in
    its order (KPFCNN's and RandLA-Net's transforms call it once)."""

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
    model.trans_point_sampler = WholeCrop(centre)
    attr = {'split': 'predict', 'name': 'sphere', 'sphere_seed': seed}
    with seeded(seed):
        item = model.transform(crop, attr, is_test=True)
    held = indices[item['r_mask_list'][0]]
    return {'data': item, 'attr': attr}, held


class SphereCovering:
    """The jobs of a KPFCNN model on a preprocessed cloud (`preprocess`
    output: point [M, 3], feat, search_tree)."""

    def __init__(self, model, data, votes, seed, batch_size=None):
        cfg = model.cfg
        self.model, self.data, self.votes, self.seed = model, data, votes, seed
        self.radius = cfg.in_radius
        self.centres = sphere_centres(np.asarray(data['point']), self.radius)
        # Counted first, searched batch by batch: the members of every
        # sphere at once would take ~6 indices a point.
        counts = data['search_tree'].query_radius(
            self.centres, r=self.radius, count_only=True)
        min_points = min(cfg.get('min_in_points', 3), cfg.max_in_points)
        keep = np.flatnonzero(counts >= min_points)
        limit = min(cfg.batch_limit, cfg.max_in_points)
        groups = batches_of(np.minimum(counts[keep], limit),
                            int(cfg.batch_limit), batch_size)
        self.jobs = [keep[group] for group in groups]
        self.passes_per_vote = len(keep)
        self.transforms = {vote: vote_transform(cfg, vote, seed)
                           for vote in votes}
        # Sorted neighbor lists: the same file gives the same scores, bit
        # for bit (Open3D's threaded search orders them differently run to
        # run).
        self.batcher = NCMConcatBatcher(sort_neighbors=True)

    def __getstate__(self):
        # A worker gets the weightless copy of the model.
        return {**self.__dict__, 'model': data_model(self.model)}

    def build(self, spheres):
        """[(inputs, held)] of every vote of the batch of `spheres`: the
        collated batch and the points [n] whose scores its logits are."""
        members = self.data['search_tree'].query_radius(
            self.centres[spheres], r=self.radius)
        built = []
        with no_colour_drop(self.model):
            for vote in self.votes:
                R, scale = self.transforms[vote]
                items, held = [], []
                for sphere, indices in zip(spheres, members):
                    item, points_held = sphere_item(
                        self.model, self.data, indices, self.centres[sphere],
                        sphere_seed(self.seed, vote, int(sphere)))
                    p = item['data']['p_list'][0]
                    item['data']['p_list'][0] = ((p @ R.T) * scale).astype(
                        np.float32)
                    items.append(item)
                    held.append(points_held)
                inputs = self.batcher.collate_fn(items)
                if len(inputs['data'].lengths[0]) != len(items):
                    raise RuntimeError(
                        f"the batcher kept {len(inputs['data'].lengths[0])} "
                        f"of {len(items)} spheres (model.batch_limit "
                        f"{self.model.cfg.batch_limit})")
                built.append((inputs, np.concatenate(held).astype(np.int64)))
        return built
