"""NCM learning (Gong, Ye, Ma, CVM 2022) for Open3D-ML's semantic-segmentation
models (KPConv, RandLA-Net, PointTransformer, SparseConvUnet, PVCNN).

Importing the package registers its classes into Open3D-ML's registries:
the models NCMKPFCNN, NCMRandLANet, NCMPointTransformer, NCMSparseConvUnet
and NCMPVCNN, the pipeline NCMSemanticSegmentation, the sampler
SharedSpatiallyRegularSampler and the datasets in `ncm_plugin.datasets`
(S3DIS, ScanNet, Semantic3D, LAS/LAZ tiles).
Open3D-ML itself fills its registries lazily, so the stock modules are
imported explicitly here as well.
"""
import importlib

# Stock modules whose import registers Open3D-ML's own classes.
_STOCK_MODULES = ('open3d._ml3d.torch.models', 'open3d._ml3d.torch.pipelines',
                  'open3d._ml3d.datasets')
_PLUGIN_MODULES = ('.models', '.training.pipeline', '.training.samplers',
                   '.datasets')


def register():
    """Import everything that registers a class; safe to call twice."""
    for name in _STOCK_MODULES:
        importlib.import_module(name)
    for name in _PLUGIN_MODULES:
        importlib.import_module(name, __name__)


register()
