"""The covering of backbones that take a whole scene (PointTransformer on
its voxel grid, SparseConvUnet on its voxels): one pass per vote, the
preprocessed cloud as it is, or turned, scaled and flipped by
`vote_transform` (votes.py) about its centre with its lowest corner kept
(SparseConvUnet places the scene in a grid from the origin).
"""
import numpy as np

from ..training.items import as_main_process
from ..training.samplers import seeded, sphere_seed
from .covering import StockBatchedCovering


class SceneCovering(StockBatchedCovering):
    """The jobs (one per vote) of a whole-scene model on a preprocessed
    cloud (its `preprocess` output: point [M, 3], feat)."""

    def __init__(self, model, data, votes, seed, batch_size=None):
        super().__init__(model, data, votes, seed)
        self.jobs = list(votes)
        self.passes_per_vote = 1

    def build(self, vote):
        """[(inputs, held)] of vote `vote`: the scene's batch and its points
        [M] (the logits are one row per preprocessed point)."""
        points = np.asarray(self.data['point'], dtype=np.float32)
        R, scale = self.transforms[vote]
        if vote:
            centre = (points.min(axis=0) + points.max(axis=0)) / 2
            turned = (points - centre) @ R.T * scale
            points = turned - turned.min(axis=0) + points.min(axis=0)
        scene = {'point': points.astype(np.float32),
                 'feat': self.data['feat'],
                 'label': np.zeros(len(points), dtype=np.int32)}
        attr = {'split': 'test', 'name': 'scene'}
        with seeded(sphere_seed(self.seed, vote, 0)), as_main_process():
            item = self.model.transform(scene, attr)
        inputs = self.batcher.collate_fn([{'data': item, 'attr': attr}])
        return [(inputs, np.arange(len(points), dtype=np.int64))]
