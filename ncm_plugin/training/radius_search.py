"""KPConv's neighbour, pooling and upsampling lists with a hash table sized
for the points, and each upsampling row's nearest point from the search's
own distances.

Open3D-ML's `kpconv.batch_neighbors` calls FixedRadiusSearch with its
default hash table of 1/64 as many buckets as support points: at KPConv's
radii (a few grid cells) every bucket then holds several occupied cells,
and each query walks them all. Those searches are ~80 % of a batch's
collation (tools/bench/data.py's profile). With a table of a quarter as
many buckets as points the same searches run 1.5-1.9x faster on one core
(docs/performance.md: 1.9x for one S3DIS batch's searches alone, 1.5x in a
batch's profile), and find the same neighbours (rows ordered by the
hash grid either way: sorted under pipeline.deterministic).

KPConv upsamples from column 0 of its upsampling lists, the nearest point
(batcher.nearest_first puts it there). The search measures every distance
anyway; `nearest_in_rows` takes each row's nearest from those instead of
gathering the coordinates of every entry again.

Open3D-ML's batcher looks `batch_neighbors` up in its module when it
collates; `sized_hash_tables()` has it find `Searches.batch_neighbors` for
the duration of a collate, in this process only.
"""
import contextlib

import numpy as np
import torch
from open3d._ml3d.torch.dataloaders import concat_batcher
from open3d.ml.torch.layers import FixedRadiusSearch

from ..losses import row_splits

# Buckets per support point of FixedRadiusSearch's hash table (its default:
# 1/64); measured 1/8 to 2 alike, 1/64 1.9x slower on one core.
HASH_TABLE_SIZE_FACTOR = 0.25
# The search sums a squared distance as dx² + (dy² + dz²), the plugin's
# nearest point is by (dx² + dy²) + dz² (its definition since the first
# batches were recorded, tests/data/batch_digests.json). Each sum is within
# three float32 roundings (3 * 2^-24) of the exact value, so a row's nearest
# by one lies within 1 + 12 * 2^-24 of the least by the other: entries
# within 1 + 2^-20 of the row's least search distance are measured again.
NEAR_TIE = 1 + 2 ** -20


def search(queries, supports, q_batches, s_batches, radius,
           distances=False):
    """FixedRadiusSearch of queries [Nq, 3] in supports [Ns, 3] (numpy),
    cloud by cloud (points per cloud), with the sized hash table."""
    return FixedRadiusSearch(return_distances=distances)(
        torch.from_numpy(supports), torch.from_numpy(queries), radius,
        row_splits(s_batches), row_splits(q_batches),
        hash_table_size_factor=HASH_TABLE_SIZE_FACTOR)


def dense(found, shadow):
    """[Nq, K] int32 numpy rows of a search's ragged neighbours, padded with
    `shadow` to the longest row (what ragged_to_dense gives, in half its
    time: one boolean-mask assignment fills the rows in order)."""
    sizes = (found.neighbors_row_splits[1:]
             - found.neighbors_row_splits[:-1]).numpy()
    longest = int(sizes.max()) if len(sizes) else 0
    lists = np.full((len(sizes), longest), shadow, dtype=np.int32)
    lists[np.arange(longest) < sizes[:, None]] = found.neighbors_index.numpy()
    return lists


def nearest_in_rows(found, queries, supports):
    """(nearest [Nq], column [Nq]) int64 of a search with distances: each
    row's nearest support point (of equally near ones the lowest index;
    the shadow index Ns for an empty row) and its place in the row.

    Nearest by float32 (dx² + dy²) + dz² of queries [Nq, 3] and supports
    [Ns, 3] (torch). The search's own squared distances narrow each row to
    its near ties (NEAR_TIE), usually one entry; only those are measured.
    """
    count, shadow = len(queries), len(supports)
    splits, index = found.neighbors_row_splits, found.neighbors_index
    sizes = splits[1:] - splits[:-1]
    rows = torch.repeat_interleave(
        torch.arange(count, dtype=torch.int32), sizes)
    least = torch.segment_reduce(found.neighbors_distance, 'min',
                                 lengths=sizes)
    near = torch.nonzero(found.neighbors_distance <= least.index_select(
        0, rows) * NEAR_TIE).squeeze(1)
    row = rows.index_select(0, near).long()
    point = index.index_select(0, near).long()
    distance2 = (supports[:, 0].index_select(0, point)
                 - queries[:, 0].index_select(0, row)).square_()
    for axis in (1, 2):
        distance2 += (supports[:, axis].index_select(0, point)
                      - queries[:, axis].index_select(0, row)).square_()
    best = torch.full((count,), float('inf')).scatter_reduce_(
        0, row, distance2, 'amin')
    nearest = torch.full((count,), shadow, dtype=torch.int64).scatter_reduce_(
        0, row, torch.where(distance2 == best.index_select(0, row), point,
                            shadow), 'amin')
    chosen = torch.nonzero(point == nearest.index_select(0, row)).squeeze(1)
    column = torch.zeros(count, dtype=torch.int64)
    column[row[chosen]] = near[chosen] - splits[row[chosen]]
    return nearest, column


class Searches:
    """The radius searches of one collate. Of each upsampling search (more
    queries than supports, or as many: KPConv's upsampling lists search the
    finer layer's points in the coarser one's) it keeps every row's nearest
    point and its column (`nearest_in_rows`), by the arrays' memory: the
    batch's points tensors share it (torch.from_numpy)."""

    def __init__(self):
        self.nearest = {}

    def batch_neighbors(self, queries, supports, q_batches, s_batches,
                        radius):
        """[Nq, K] int32 indices into supports [Ns, 3] of every support
        point within `radius` of each query [Nq, 3], cloud by cloud
        (q_batches, s_batches: points per cloud), rows padded with the
        shadow index Ns to the longest; as Open3D-ML's
        kpconv.batch_neighbors gives them."""
        upsampling = queries is not supports and len(queries) >= len(supports)
        found = search(queries, supports, q_batches, s_batches, radius,
                       distances=upsampling)
        lists = dense(found, len(supports))
        if upsampling:
            nearest, column = nearest_in_rows(
                found, torch.from_numpy(queries), torch.from_numpy(supports))
            self.nearest[queries.ctypes.data, supports.ctypes.data] = (
                nearest, column, lists.shape[1])
        return lists

    def nearest_of(self, queries, supports, width):
        """(nearest [Nq], column [Nq]) of the upsampling search of the
        points tensors `queries` in `supports`, whose rows were `width`
        long."""
        found = self.nearest.get((queries.data_ptr(), supports.data_ptr()))
        if found is None or found[2] != width:
            raise RuntimeError(
                f"no upsampling search of {len(queries)} points in "
                f"{len(supports)} with rows of {width} was made in this "
                f"collate: Open3D-ML's batcher no longer builds its lists "
                f"as open3d 0.20's does")
        return found[:2]


@contextlib.contextmanager
def sized_hash_tables():
    """Open3D-ML's ConcatBatcher searches with a new `Searches` (yielded)
    inside the block."""
    stock = concat_batcher.batch_neighbors
    searches = Searches()
    concat_batcher.batch_neighbors = searches.batch_neighbors
    try:
        yield searches
    finally:
        concat_batcher.batch_neighbors = stock
