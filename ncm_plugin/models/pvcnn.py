"""NCMPVCNN: Open3D-ML's PVCNN whose training loss gains the NCM term."""
from open3d._ml3d.torch.models.pvcnn import PVCNN
from open3d._ml3d.utils import MODEL

from .base import NCMLayout, NCMTerm, equal_lengths, prepared


class NCMPVCNN(NCMTerm, PVCNN):
    """PVCNN + weight * NCM loss; everything else is the stock model.

    Batches are dense (DefaultBatcher): points [B, 3, N], labels [B, N],
    logits [B, N, C]. PVCNN's batch has no neighbor lists, so the
    neighborhood is 'knn', built when the batch is collated.
    """

    def ncm_collate(self, batch):
        if self.ncm_active:
            points = batch['point']
            num_clouds, _, num_points = points.shape
            batch['ncm_neighbors'] = self.knn_lists(
                points.transpose(1, 2).reshape(-1, 3),
                equal_lengths(num_clouds, num_points))
        return batch

    def ncm_layout(self, results, batch):
        num_clouds, num_points, num_classes = results.shape
        return NCMLayout(results.reshape(-1, num_classes),
                         batch['label'].reshape(-1),
                         prepared(batch, 'ncm_neighbors', type(self).__name__),
                         equal_lengths(num_clouds, num_points, results.device))


MODEL._register_module(NCMPVCNN, 'torch')
