"""Synthetic datasets by name: what `make_demo_data.py --dataset` and a
config's `dataset.demo_data: {kind: ...}` can write."""
from .lidar.synthetic import write_demo_lidar
from .s3dis.synthetic import write_demo_s3dis
from .scannet.synthetic import write_demo_scannet
from .semantic3d.synthetic import write_demo_semantic3d

# Each writes the dataset's raw layout (ScanNet and Semantic3D then need
# their preprocess_*.py step; S3DIS and the LiDAR tiles convert on first use).
WRITERS = {
    'lidar': write_demo_lidar,
    's3dis': write_demo_s3dis,
    'scannet': write_demo_scannet,
    'semantic3d': write_demo_semantic3d,
}


def write_demo(kind, out_dir, **options):
    """Write the synthetic dataset `kind` (a key of WRITERS) into out_dir."""
    if kind not in WRITERS:
        raise ValueError(f"unknown synthetic dataset {kind!r}; choose one of "
                         f"{sorted(WRITERS)}")
    return WRITERS[kind](out_dir, **options)
