"""NCMKPFCNN: Open3D-ML's KPFCNN whose training loss gains the NCM term."""
import torch
from open3d._ml3d.torch.models.kpconv import KPFCNN
from open3d._ml3d.utils import MODEL

from .losses import NCMConfig, NCMLoss
from .scene_target import layer0_radius, scene_target


class NCMKPFCNN(KPFCNN):
    """KPFCNN + weight * NCM loss (Gong, Ye, Ma, CVM 2022).

    Everything but `get_loss` is the stock KPFCNN: same architecture,
    preprocessing, batching and inference. Settings live under `model.ncm`
    (see `NCMConfig`); with weight 0 the loss is exactly KPFCNN's.
    """

    def __init__(self, name='NCMKPFCNN', ncm=None, **kwargs):
        ncm_cfg = NCMConfig.from_dict(ncm)
        super().__init__(name=name, ncm=ncm_cfg.to_dict(), **kwargs)
        ncm_cfg.check_architecture(self.cfg.architecture)
        self.ncm_loss = NCMLoss(self.cfg.num_classes,
                                self.cfg.ignored_label_inds,
                                **ncm_cfg.to_dict())
        self.loss_terms = {}

    @property
    def uses_scene_target(self):
        return self.ncm_loss.cfg.target == 'scene' and self.ncm_loss.cfg.weight > 0

    def extra_repr(self):
        # Part of the model's repr, hence of Open3D-ML's preprocessing cache
        # key: the cache stores the scene target, so what it depends on must
        # select the cache.
        if not self.uses_scene_target:
            return ''
        ncm = self.ncm_loss.cfg
        hood = (f'knn k={ncm.k}' if ncm.neighborhood == 'knn' else
                f'kpconv radius={layer0_radius(self.cfg)}')
        return (f'target=scene, neighborhood={hood}, first_subsampling_dl='
                f'{self.cfg.first_subsampling_dl}')

    def preprocess(self, data, attr):
        """Stock preprocessing; with target 'scene' also the scene's target
        NCM, which Open3D-ML's cache then stores with the scene."""
        data = super().preprocess(data, attr)
        if self.uses_scene_target:
            data['ncm_target'] = scene_target(data['point'], data['label'],
                                              self.cfg, self.ncm_loss.cfg)
        return data

    def transform(self, data, attr, is_test=False):
        """Stock transform; with target 'scene' the scene's target NCM once
        per sphere (`ncm_target_list`, which the stock batcher ignores)."""
        out = super().transform(data, attr, is_test)
        if self.uses_scene_target:
            if 'ncm_target' not in data:
                raise KeyError(
                    f"model.ncm.target is 'scene' but the preprocessed scene "
                    f"{attr.get('name')!r} has no ncm_target (a cache written "
                    f"by another model.ncm setting?): delete it from "
                    f"dataset.cache_dir")
            out['ncm_target_list'] = [data['ncm_target']] * len(out['p_list'])
        return out

    def get_loss(self, Loss, results, inputs, device):
        """Stock loss (weighted CE + deformable regularizer) + NCM term.

        Leaves the separate terms, as detached tensors on the device, in
        `self.loss_terms` so the pipeline can log them (reading them here
        would make every step wait for the device).
        """
        loss, labels, scores = super().get_loss(Loss, results, inputs, device)
        terms = {'cross_entropy': self.output_loss, 'regularizer': self.reg_loss}
        if self.ncm_loss.cfg.weight > 0:
            batch = inputs['data']
            ncm_term = self.ncm_loss(results, batch.labels, batch)
            loss = loss + ncm_term
            terms['ncm'] = ncm_term
            terms['ncm_kl'] = self.ncm_loss.last_kl
        self.loss_terms = {k: torch.as_tensor(v, device=loss.device).detach()
                           for k, v in terms.items()}
        return loss, labels, scores


MODEL._register_module(NCMKPFCNN, 'torch')
