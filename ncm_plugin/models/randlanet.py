"""NCMRandLANet: Open3D-ML's RandLANet whose training loss gains the NCM term."""
from open3d._ml3d.torch.models.randlanet import RandLANet
from open3d._ml3d.utils import MODEL

from .base import NCMLayout, NCMTerm, dense_to_stacked, equal_lengths, prepared


class NCMRandLANet(NCMTerm, RandLANet):
    """RandLANet + weight * NCM loss; everything else is the stock model.

    Batches are dense (DefaultBatcher): B clouds of num_points points,
    logits [B, N, C], labels [B, N]; the NCM sees them stacked ([B*N, C],
    lengths [N] * B). Neighborhood 'model': RandLA-Net's own first-layer kNN
    lists (`neighbor_indices[0]`, model.num_neighbors points, the point
    itself among them and left out of the NCM); 'knn': k nearest neighbors
    built when the batch is collated.
    """
    own_neighbors = "RandLA-Net's first-layer kNN lists (neighbor_indices[0])"
    deterministic_preprocess = True  # grid subsampling and a KD-tree

    def ncm_collate(self, batch):
        if self.ncm_active and self.ncm_loss.cfg.neighborhood == 'knn':
            coords = batch['coords'][0]
            num_clouds, num_points, _ = coords.shape
            batch['ncm_neighbors'] = self.knn_lists(
                coords.reshape(-1, 3), equal_lengths(num_clouds, num_points))
        return batch

    def ncm_layout(self, results, batch):
        num_clouds, num_points, num_classes = results.shape
        if self.ncm_loss.cfg.neighborhood == 'knn':
            neighbors = prepared(batch, 'ncm_neighbors', type(self).__name__)
        else:
            neighbors = dense_to_stacked(batch['neighbor_indices'][0].to(
                results.device, non_blocking=True))
        return NCMLayout(results.reshape(-1, num_classes),
                         batch['labels'].reshape(-1), neighbors,
                         equal_lengths(num_clouds, num_points, results.device))


MODEL._register_module(NCMRandLANet, 'torch')
