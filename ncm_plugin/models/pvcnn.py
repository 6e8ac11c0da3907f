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

    @classmethod
    def check_pipeline(cls, options, name=None, where='pipeline'):
        """Refuse pipeline settings PVCNN cannot run with (the config
        checker calls this for the stock PVCNN too); options: the
        PipelineOptions. pipeline.amp: Open3D's voxel ops are float32 only
        (trilinear_devoxelize checks for kFloat32 and avg_voxelize adds the
        float16 features into a float32 grid), so the first CUDA forward
        under autocast fails."""
        if options.amp:
            raise ValueError(
                f"{where}.amp is not supported by {name or cls.__name__}: "
                f"Open3D's avg_voxelize and trilinear_devoxelize take float32 "
                f"features only, so the first forward under float16 "
                f"autocast fails on CUDA; set {where}.amp: false")

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
