"""NCM learning (Gong, Ye, Ma, CVM 2022) for Open3D-ML's semantic-segmentation
models (KPConv, RandLA-Net, PointTransformer, SparseConvUnet, PVCNN).

Importing the package registers its classes into Open3D-ML's registries:
the models NCMKPFCNN, NCMRandLANet, NCMPointTransformer, NCMSparseConvUnet
and NCMPVCNN, the pipeline NCMSemanticSegmentation, the sampler
SharedSpatiallyRegularSampler and the datasets in `ncm_plugin.datasets`
(S3DIS, ScanNet, Semantic3D, LAS/LAZ tiles).
Open3D-ML itself fills its registries lazily, so the stock modules are
imported explicitly here as well.

Without Open3D the package still imports, registering nothing: the math
(`ncm_plugin.ncm`) and the loss (`ncm_plugin.losses`) need torch only.
"""
import importlib

# Stock modules whose import registers Open3D-ML's own classes.
_STOCK_MODULES = ('open3d._ml3d.torch.models', 'open3d._ml3d.torch.pipelines',
                  'open3d._ml3d.datasets')
_PLUGIN_MODULES = ('.models', '.training.pipeline', '.training.samplers',
                   '.datasets')


def register():
    """Import everything that registers a class; safe to call twice.
    Raises ModuleNotFoundError without Open3D-ML."""
    for name in _STOCK_MODULES:
        importlib.import_module(name)
    for name in _PLUGIN_MODULES:
        importlib.import_module(name, __name__)


def _register_if_open3d():
    """register(), unless Open3D itself is missing (any other missing
    module, or a broken Open3D, still fails the import)."""
    try:
        register()
    except ModuleNotFoundError as error:
        if error.name != 'open3d' and not (error.name or '').startswith(
                'open3d.'):
            raise


_register_if_open3d()
