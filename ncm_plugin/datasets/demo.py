"""Synthetic datasets by name: what `make_demo_data.py --dataset` and a
config's `dataset.demo_data: {kind: ...}` can write."""
from .synthetic import write_demo_s3dis

WRITERS = {
    's3dis': write_demo_s3dis,
}


def write_demo(kind, out_dir, **options):
    """Write the synthetic dataset `kind` (a key of WRITERS) into out_dir."""
    if kind not in WRITERS:
        raise ValueError(f"unknown synthetic dataset {kind!r}; choose one of "
                         f"{sorted(WRITERS)}")
    return WRITERS[kind](out_dir, **options)
