"""NCMKPFCNN: Open3D-ML's KPFCNN whose training loss gains the NCM term."""
import inspect

from open3d._ml3d.torch.models.kpconv import KPFCNN
from open3d._ml3d.utils import MODEL

from ..scene_target import layer0_radius, scene_target
from .base import NCMLayout, NCMTerm


class NCMKPFCNN(NCMTerm, KPFCNN):
    """KPFCNN + weight * NCM loss (Gong, Ye, Ma, CVM 2022).

    Everything but `get_loss` is the stock KPFCNN: same architecture,
    preprocessing, batching and inference. Settings live under `model.ncm`
    (see `NCMConfig`); with weight 0 the loss is exactly KPFCNN's.

    Neighborhood 'model': the radius lists KPConv's batcher builds for the
    layer `model.ncm.layer` (layer 0: radius conv_radius *
    first_subsampling_dl); 'knn': built by the pipeline's batcher. Only this
    backbone supports `layer` > 0 and `target: scene`.
    """
    own_neighbors = "KPConv's radius neighbor lists of model.ncm.layer"

    @classmethod
    def check_ncm(cls, ncm_cfg, model_cfg, where='model.ncm'):
        architecture = model_cfg.get('architecture') or inspect.signature(
            KPFCNN.__init__).parameters['architecture'].default
        ncm_cfg.check_architecture(architecture, where)

    @property
    def uses_scene_target(self):
        return self.ncm_loss.cfg.target == 'scene' and self.ncm_active

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

    def stock_terms(self, loss):
        """KPFCNN's loss is cross entropy + deformable-offset regularizer."""
        return {'cross_entropy': self.output_loss,
                'regularizer': self.reg_loss}

    def ncm_layout(self, results, batch):
        """The input points (layer 0), or those of `layer` with the pooling
        lists that lead there; neighbors as `NCMLoss.neighbors`."""
        ncm = self.ncm_loss
        layer = ncm.cfg.layer
        target = ncm.scene_targets(batch) if ncm.cfg.target == 'scene' else None
        return NCMLayout(results, batch.labels, ncm.neighbors(batch),
                         batch.lengths[layer],
                         batch.pools[:layer] if layer else (), target)


MODEL._register_module(NCMKPFCNN, 'torch')
