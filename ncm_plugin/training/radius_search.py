"""KPConv's neighbour, pooling and upsampling lists with a hash table sized
for the points.

Open3D-ML's `kpconv.batch_neighbors` calls FixedRadiusSearch with its
default hash table of 1/64 as many buckets as support points: at KPConv's
radii (a few grid cells) every bucket then holds several occupied cells,
and each query walks them all. Those searches are ~80 % of a batch's
collation (tools/bench/data.py's profile). With a table of a quarter as
many buckets as points the same searches run 1.5-1.9x faster on one core
(docs/performance.md: 1.9x for one S3DIS batch's searches alone, 1.5x in a
batch's profile), and find the same neighbours (rows ordered by the
hash grid either way: sorted under pipeline.deterministic).

Open3D-ML's batcher looks `batch_neighbors` up in its module when it
collates; `sized_hash_tables()` has it find this one for the duration of a
collate, in this process only.
"""
import contextlib

import torch
from open3d._ml3d.torch.dataloaders import concat_batcher
from open3d.ml.torch.layers import FixedRadiusSearch
from open3d.ml.torch.ops import ragged_to_dense

from ..losses import row_splits

# Buckets per support point of FixedRadiusSearch's hash table (its default:
# 1/64); measured 1/8 to 2 alike, 1/64 1.9x slower on one core.
HASH_TABLE_SIZE_FACTOR = 0.25


def batch_neighbors(queries, supports, q_batches, s_batches, radius):
    """[Nq, K] int32 indices into supports [Ns, 3] of every support point
    within `radius` of each query [Nq, 3], cloud by cloud (q_batches,
    s_batches: points per cloud), rows padded with the shadow index Ns to
    the longest; as Open3D-ML's kpconv.batch_neighbors gives them."""
    found = FixedRadiusSearch()(
        torch.from_numpy(supports), torch.from_numpy(queries), radius,
        row_splits(s_batches), row_splits(q_batches),
        hash_table_size_factor=HASH_TABLE_SIZE_FACTOR)
    splits = found.neighbors_row_splits
    longest = int((splits[1:] - splits[:-1]).max()) if len(queries) else 0
    shadow = torch.tensor([len(supports)], dtype=torch.int32)
    return ragged_to_dense(found.neighbors_index.reshape(-1, 1), splits,
                           longest, shadow).squeeze(2).numpy()


@contextlib.contextmanager
def sized_hash_tables():
    """Open3D-ML's ConcatBatcher searches with `batch_neighbors` inside the
    block."""
    stock = concat_batcher.batch_neighbors
    concat_batcher.batch_neighbors = batch_neighbors
    try:
        yield
    finally:
        concat_batcher.batch_neighbors = stock
