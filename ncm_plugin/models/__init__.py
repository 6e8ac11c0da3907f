"""The registered NCM models: each a stock Open3D-ML semantic-segmentation
model whose `get_loss` gains the NCM term (the shared `base.NCMTerm`)."""
from .base import NCMLayout, NCMTerm
from .kpconv import NCMKPFCNN
from .point_transformer import NCMPointTransformer
from .pvcnn import NCMPVCNN
from .randlanet import NCMRandLANet
from .sparseconvunet import NCMSparseConvUnet

__all__ = ['NCMLayout', 'NCMTerm', 'NCMKPFCNN', 'NCMPointTransformer',
           'NCMPVCNN', 'NCMRandLANet', 'NCMSparseConvUnet']
