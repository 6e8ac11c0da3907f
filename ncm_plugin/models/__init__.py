"""The registered NCM models: each a stock Open3D-ML semantic-segmentation
model whose `get_loss` gains the NCM term (the shared `base.NCMTerm`)."""
from .base import NCMLayout, NCMTerm
from .kpconv import NCMKPFCNN

__all__ = ['NCMLayout', 'NCMTerm', 'NCMKPFCNN']
