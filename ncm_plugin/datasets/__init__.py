"""The datasets: one folder per dataset, each with loader.py (the class
registered in Open3D-ML's DATASET registry), convert.py (raw files -> the
cache the loader reads) and synthetic.py (a generator of the raw layout);
helpers they share (PLY, atomic writes, the demo writers) beside them.
Importing this package registers the loaders."""
from .s3dis import loader as _s3dis  # noqa: F401  (registers RobustS3DIS)
from .scannet import loader as _scannet  # noqa: F401  (registers ScanNet20)
from .semantic3d import loader as _semantic3d  # noqa: F401  (RobustSemantic3D)
from .lidar import loader as _lidar  # noqa: F401  (registers LASDataset)
