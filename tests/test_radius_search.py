"""KPConv's radius searches with a hash table sized for the points find,
row by row, exactly the support points a brute-force distance test finds
(and Open3D-ML's own batch_neighbors finds), cloud by cloud, padded with
the shadow index; Open3D-ML's batcher uses them only inside the block."""
import numpy as np
from open3d._ml3d.torch.dataloaders import concat_batcher
from open3d._ml3d.torch.models.kpconv import batch_neighbors as stock

from ncm_plugin.training.radius_search import (batch_neighbors,
                                               sized_hash_tables)


def rows_as_sets(neighbors, shadow):
    return [set(row[row != shadow].tolist()) for row in neighbors]


def test_the_same_neighbours_as_a_brute_force_search():
    rng = np.random.default_rng(0)
    supports = rng.uniform(0, 1, (700, 3)).astype(np.float32)
    queries = rng.uniform(0, 1, (300, 3)).astype(np.float32)
    s_batches, q_batches = [400, 300], [120, 180]
    radius = 0.15
    found = batch_neighbors(queries, supports, q_batches, s_batches, radius)
    assert found.dtype == np.int32 and found.shape[0] == 300
    expected = []
    for q, query in enumerate(queries):
        cloud = 0 if q < 120 else 1
        first = 0 if cloud == 0 else 400
        inside = first + np.flatnonzero(np.sum(
            (supports[first:first + s_batches[cloud]] - query) ** 2, 1) <
            radius ** 2)
        expected.append(set(inside.tolist()))
    assert rows_as_sets(found, 700) == expected
    assert found.shape[1] == max(len(e) for e in expected)
    assert rows_as_sets(stock(queries, supports, q_batches, s_batches,
                              radius), 700) == expected


def test_the_stock_batcher_finds_them_only_inside_the_block():
    assert concat_batcher.batch_neighbors is stock
    with sized_hash_tables():
        assert concat_batcher.batch_neighbors is batch_neighbors
    assert concat_batcher.batch_neighbors is stock
