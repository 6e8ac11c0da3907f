"""NCMPointTransformer: Open3D-ML's PointTransformer whose training loss gains
the NCM term."""
import torch
from open3d._ml3d.torch.models.point_transformer import PointTransformer
from open3d._ml3d.utils import MODEL

from .base import NCMLayout, NCMTerm, prepared


class NCMPointTransformer(NCMTerm, PointTransformer):
    """PointTransformer + weight * NCM loss; everything else is the stock
    model.

    Batches are stacked (PointTransformerBatch: points [N, 3], row_splits
    [B + 1]); logits [N, C]. Its kNN lists are built inside the forward pass
    and not kept, so the neighborhood is 'knn', built when the batch is
    collated.
    """
    deterministic_preprocess = True  # grid subsampling and a KD-tree

    def ncm_collate(self, batch):
        if self.ncm_active:
            batch.ncm_lengths = torch.diff(batch.row_splits)
            batch.ncm_neighbors = self.knn_lists(batch.point,
                                                 batch.ncm_lengths)
        return batch

    def ncm_layout(self, results, batch):
        name = type(self).__name__
        return NCMLayout(results, batch.label,
                         prepared(batch, 'ncm_neighbors', name),
                         prepared(batch, 'ncm_lengths', name))


MODEL._register_module(NCMPointTransformer, 'torch')
