"""Dataset fixes: one module per stock loader, registered in Open3D-ML's DATASET
registry when imported."""
from . import s3dis  # noqa: F401  (registers RobustS3DIS)
from . import scannet, semantic3d  # noqa: F401  (ScanNet20, RobustSemantic3D)
