"""The batcher that carries scene targets (`model.ncm.target: scene`) from
the items to the batch; see scene_target.py for how they are made."""
import numpy as np
import torch
from open3d._ml3d.torch.dataloaders import ConcatBatcher


class NCMConcatBatcher(ConcatBatcher):
    """Open3D-ML's ConcatBatcher for KPFCNN that also carries the scene
    targets: `batch.ncm_target [B, C, C]` (CPU) when the items have them."""

    def __init__(self, device):
        super().__init__(device, 'KPFCNN')

    def collate_fn(self, batches):
        out = super().collate_fn(batches)
        targets = [t for item in batches
                   for t in item['data'].get('ncm_target_list', ())]
        if targets:
            spheres = sum(len(item['data']['p_list']) for item in batches)
            if len(targets) != spheres:
                raise ValueError(f"{len(targets)} scene targets for {spheres} "
                                 f"spheres: every item needs ncm_target_list")
            # KPConvBatch keeps the first spheres up to batch_limit.
            kept = len(out['data'].lengths[0])
            out['data'].ncm_target = torch.from_numpy(np.stack(targets[:kept]))
        return out
