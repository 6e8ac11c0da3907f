"""RandLA-Net's own covering: crops of the model's num_points nearest
points, centred where the cloud is least covered (the spatially regular
sampling of RandLA-Net's authors, which Open3D-ML's test loop starts and
never updates).

Each point has a possibility, a small seeded random value at first; the next
crop is centred on the point of lowest possibility, and adds
(1 - d² / max d²)² to the possibility of each point of the crop (d: its
distance to the centre). A covering ends when every point's possibility
exceeds 0.5 (Open3D-ML's test end condition): each point then lies in the
inner part (d < 0.54 max d) of at least one crop, and is in about 3.5 crops
on a surface. The crops are planned before the model runs (they do not
depend on its output); a vote is another covering (its own seed) turned,
scaled and flipped by `vote_transform` about each crop's centre.
"""
import numpy as np

from ..training.items import as_main_process
from ..training.samplers import seeded, sphere_seed
from .covering import StockBatchedCovering
from .spheres import WholeCrop

# Open3D-ML's RandLA-Net test loop ends when every possibility exceeds this.
COVERED = 0.5


def plan_crops(points, tree, size, rng):
    """[(centre index, crop indices [size] int64)] of one covering of
    `points [M, 3]` by crops of their `size` nearest points (tree: a KD-tree
    of `points`, with sklearn's query)."""
    size = min(size, len(points))
    possibility = rng.random(len(points)) * 1e-3
    crops = []
    while possibility.min() <= COVERED:
        centre = int(np.argmin(possibility))
        distances, indices = tree.query(points[centre:centre + 1], k=size)
        d2 = distances[0].astype(np.float64) ** 2
        possibility[indices[0]] += np.square(1 - d2 / max(d2.max(), 1e-12))
        crops.append((centre, indices[0].astype(np.int64)))
    return crops


class CropCovering(StockBatchedCovering):
    """The jobs of a RandLA-Net model on a preprocessed cloud (its
    `preprocess` output: point [M, 3], feat, search_tree)."""

    def __init__(self, model, data, votes, seed, batch_size=None):
        super().__init__(model, data, votes, seed)
        points = np.asarray(data['point'])
        batch_size = batch_size or 1
        self.jobs = []
        self.passes_per_vote = 0
        for vote in votes:
            crops = plan_crops(points, data['search_tree'],
                               model.cfg.num_points,
                               np.random.default_rng([seed, vote]))
            self.passes_per_vote = max(self.passes_per_vote, len(crops))
            numbered = [(vote, number, centre, indices) for number,
                        (centre, indices) in enumerate(crops)]
            self.jobs += [numbered[i:i + batch_size]
                          for i in range(0, len(numbered), batch_size)]

    def build(self, crops):
        """[(inputs, held)]: the collated batch of `crops` and the points
        [n] whose scores its logits [B, num_points, C] are."""
        items, held = [], []
        for vote, number, centre, indices in crops:
            R, scale = self.transforms[vote]
            origin = self.data['point'][centre]
            crop = {'point': ((self.data['point'][indices] - origin) @ R.T *
                              scale + origin).astype(np.float32),
                    'feat': None if self.data['feat'] is None
                    else self.data['feat'][indices],
                    'label': np.zeros(len(indices), dtype=np.int32),
                    'search_tree': None}
            self.model.trans_point_sampler = WholeCrop(origin)
            attr = {'split': 'predict', 'name': 'crop'}
            # RandLA-Net's transform draws from a generator of the worker's
            # seed inside a worker: the same draws in every process.
            with seeded(sphere_seed(self.seed, vote, number)), \
                    as_main_process():
                item = self.model.transform(crop, attr)
            items.append({'data': item, 'attr': attr})
            held.append(indices[item['point_inds']])
        return [(self.batcher.collate_fn(items), np.concatenate(held))]

